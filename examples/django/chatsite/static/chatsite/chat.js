// The chat box on the example's home page: one WebSocket to /ws/chat/<room>/
// (switchyard sends the upgrade to daphne), reconnecting after a close.
// Collected by `manage.py collectstatic` and served by switchyard's /static/
// files route.
(function () {
  "use strict";
  const room = new URLSearchParams(location.search).get("room") || "lobby";
  document.getElementById("room").textContent = room;
  const log = document.getElementById("log");
  const state = document.getElementById("ws-state");
  function line(text, cls) {
    const div = document.createElement("div");
    div.textContent = text;
    if (cls) div.className = cls;
    log.appendChild(div);
    log.scrollTop = log.scrollHeight;
  }
  let ws;
  function connect() {
    ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/chat/" + room + "/");
    ws.onopen = () => { state.textContent = "open"; };
    ws.onmessage = (e) => {
      const m = JSON.parse(e.data);
      if (m.type === "hello") {
        document.getElementById("ws-instance").textContent = m.instance;
      } else if (m.type === "message") {
        line(m.message + "  (via " + m.via + ")", "message");
      }
    };
    ws.onclose = (e) => {
      state.textContent = "closed " + e.code;
      line("closed with " + e.code + "; reconnecting", "closed");
      setTimeout(connect, 1000);
    };
  }
  connect();
  document.getElementById("chat").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = document.getElementById("message");
    if (input.value && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ message: input.value }));
      input.value = "";
    }
  });
})();
