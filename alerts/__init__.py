"""thermoflow's `alerts` component (see ../shared/DESIGN.md)."""
