// The overview's live figures over Server-Sent Events; every value goes in as text, never as HTML.
"use strict";
(function () {
  const text = (id, value) => { const el = document.getElementById(id); if (el) el.textContent = value; };
  const number = (n) => (n === undefined || n === null) ? "–" : Number(n).toLocaleString();

  function show(f) {
    if (!f.ready) return;
    const problems = [f.kafka_error && "Kafka: " + f.kafka_error, f.database_error && "database: " + f.database_error]
      .filter(Boolean);
    const box = document.getElementById("problems");
    box.hidden = problems.length === 0;
    box.textContent = problems.join("; ");
    if (f.per_second) {
      for (const hop of ["mqtt_in", "kafka", "stored"]) text("rate-" + hop, number(f.per_second[hop]));
      for (const hop of ["kafka", "stored", "deadletters"]) text("total-" + hop, number(f.since_start[hop]));
      text("deadletters-per-minute", number(f.deadletters_per_minute));
      text("mqtt-in-source", f.mqtt_in_source || "");
      const lag = document.querySelector("#lag tbody");
      lag.replaceChildren(...Object.entries(f.lag || {}).map(([group, behind]) => {
        const row = document.createElement("tr");
        const name = document.createElement("td"); name.textContent = group;
        const value = document.createElement("td"); value.textContent = number(behind);
        row.append(name, value);
        return row;
      }));
    }
    if (f.open_by_severity) {
      text("open-critical", number(f.open_by_severity.critical || 0));
      text("open-warning", number(f.open_by_severity.warning || 0));
      text("offline-count", number(f.offline_count));
      document.getElementById("offline").replaceChildren(...(f.offline || []).map(([device, since]) => {
        const item = document.createElement("li");
        const link = document.createElement("a");
        link.href = "/device?id=" + encodeURIComponent(device);
        link.textContent = device;
        item.append(link, " since " + since.replace("T", " ").slice(0, 19));
        return item;
      }));
    }
    text("updated", "updated " + new Date(f.at * 1000).toLocaleTimeString());
  }

  const source = new EventSource("/overview/events");
  source.onmessage = (event) => show(JSON.parse(event.data));
  source.onerror = () => text("updated", "reconnecting…");
})();
