"""The operator console: `thermoflow console`, pages served by aiohttp from Jinja2 templates (issue 16)."""
