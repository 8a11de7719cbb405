"""thermoflow's `ingest` component (see ../shared/DESIGN.md)."""
