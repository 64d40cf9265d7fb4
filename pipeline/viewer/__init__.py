"""`m2cd view`: a local web map of a run's products (Leaflet vendored, no network needed).

`layers` renders what the map shows from the products (overlays warped to Web Mercator, polygons
in WGS84, the summary figures); `server` serves them with the page under `static/`; `command`
is the CLI entry.
"""
