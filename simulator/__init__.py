"""thermoflow's `simulator` component (see ../shared/DESIGN.md)."""
