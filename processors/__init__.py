"""thermoflow's `processors` component (see ../shared/DESIGN.md)."""
