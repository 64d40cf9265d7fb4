// m2cd view: the optical scene, the change layer (opacity control), polygons with their areas.
// Served by pipeline.viewer.server; the layers come from /api and /layers, nothing from elsewhere.
"use strict";

function formatArea(m2) {
  if (m2 === null || m2 === undefined) return null;
  if (m2 >= 1e6) return (m2 / 1e6).toFixed(3) + " km²";
  if (m2 >= 1e4) return (m2 / 1e4).toFixed(2) + " ha";
  return Math.round(m2).toLocaleString("en") + " m²";
}

function showSummary(summary) {
  const rows = [
    ["Changed area", formatArea(summary.changed_area_m2)],
    ["Changed pixels", summary.changed_pixels?.toLocaleString("en")],
    ["Polygons", summary.polygon_count?.toLocaleString("en")],
    ["Min. mapping unit", summary.min_mapping_unit_px ? summary.min_mapping_unit_px + " px" : null],
    ["Threshold", summary.threshold],
    ["Pre (optical)", summary.pre],
    ["Post (SAR)", summary.post],
    ["Model", summary.model],
  ];
  const dl = document.getElementById("summary");
  for (const [name, value] of rows) {
    if (value === null || value === undefined) continue;
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    dd.dataset.field = name;
    dl.append(dt, dd);
  }
}

function popupText(props) {
  const area = formatArea(props.area_m2);
  const lines = [];
  if (area) lines.push("<b>Area: " + area + "</b>");
  lines.push("Pixels: " + props.area_px.toLocaleString("en"));
  lines.push("Mean probability: " + props.mean_probability.toFixed(3));
  lines.push("Max probability: " + props.max_probability.toFixed(3));
  return '<div class="polygon-popup">' + lines.join("<br>") + "</div>";
}

async function main() {
  const meta = await (await fetch("/api/meta.json")).json();
  const pixel = meta.mode === "pixel";
  const map = L.map("map", pixel ? { crs: L.CRS.Simple, minZoom: -8 } : { minZoom: 1 });
  map.attributionControl.setPrefix(
    pixel ? "pixel coordinates (no CRS)" : '<a href="https://leafletjs.com">Leaflet</a>'
  );
  const bounds = L.latLngBounds(meta.bounds);
  map.fitBounds(bounds);
  const overlays = {};
  if (meta.optical) {
    overlays["Optical (pre)"] = L.imageOverlay("/layers/optical.png", bounds).addTo(map);
  }
  const opacity = document.getElementById("opacity");
  const changeLayer = L.imageOverlay("/layers/change.png", bounds, {
    opacity: opacity.value / 100,
  }).addTo(map);
  overlays["Change"] = changeLayer;
  opacity.addEventListener("input", () => {
    changeLayer.setOpacity(opacity.value / 100);
    document.getElementById("opacity-value").textContent = opacity.value + " %";
  });
  const data = await (await fetch("/api/polygons.geojson")).json();
  const polygons = L.geoJSON(data, {
    coordsToLatLng: pixel ? (c) => L.latLng(c[1], c[0]) : L.GeoJSON.coordsToLatLng,
    style: { color: "#ffd400", weight: 1.5, fillOpacity: 0.05 },
    onEachFeature: (feature, layer) => layer.bindPopup(popupText(feature.properties)),
  }).addTo(map);
  overlays["Polygons"] = polygons;
  L.control.layers(null, overlays, { collapsed: false }).addTo(map);
  if (!pixel) L.control.scale({ imperial: false }).addTo(map);
  showSummary(meta.summary);
  window.m2cdView = { map, changeLayer, polygons, meta };
  const images = Object.values(overlays).filter((l) => l instanceof L.ImageOverlay);
  await Promise.all(
    images.map((l) => new Promise((done) => {
      const img = l.getElement();
      if (img.complete) done(); else img.addEventListener("load", done, { once: true });
    }))
  );
  document.body.dataset.ready = "true";
}

main().catch((err) => {
  console.error("m2cd view failed: " + err);
});
