#!/usr/bin/env node
// Issue 7 point 3: a real browser through switchyard.
//
// Headless Chromium (Debian's /usr/bin/chromium), driven by playwright-core,
// opens the Django example's chat page at BASE over HTTPS, trusting only the
// example's certificate authority (an NSS database made with certutil in a
// fresh HOME: no --ignore-certificate-errors, no SPKI pin). Two browser
// contexts (separate cookies, separate connections) join one room; a message
// typed in the first must appear in the second. Then the first context opens
// the /catalog page (issue 17: compressed at the proxy, with an SVG that is
// too) and reports how the documents arrived (Content-Encoding from DevTools,
// encodedBodySize and decodedBodySize from the Performance API) and what
// rendered. Prints one JSON object on its last stdout line for
// e2e/test_browser.py, which checks switchyard's side.
//
// Environment:
//   BASE        https://localhost:18443
//   CA_CERT     certs/dev-ca.crt
//   ROOM        chat room (default: random)
//   ARTIFACTS   directory for screenshots (default e2e/artifacts)
//   CHROMIUM    browser binary (default /usr/bin/chromium)
//   SPREAD_TRIES  reloads of the second page to land on the other daphne (default 6)
//   MODE        h2 (default): Chromium as it ships, so the page is fetched over
//               HTTP/2 and the WebSocket rides the same connection (RFC 8441)
//               when switchyard offers SETTINGS_ENABLE_CONNECT_PROTOCOL;
//               h1: --disable-http2, for contrast (HTTP/1.1 and a 101 upgrade)
//
// Exit 0 with {"ok": true, ...}; on failure exit 1 with {"ok": false, "error": ...}
// and whatever was observed so far (screenshots are still taken).

"use strict";

const { chromium } = require("playwright-core");
const { execFileSync } = require("node:child_process");
const crypto = require("node:crypto");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const REPO = path.resolve(__dirname, "..", "..");
const BASE = process.env.BASE || "https://localhost:18443";
const CA_CERT = process.env.CA_CERT || path.join(REPO, "certs", "dev-ca.crt");
const ROOM = process.env.ROOM || "browser-" + crypto.randomBytes(4).toString("hex");
const ARTIFACTS = process.env.ARTIFACTS || path.join(REPO, "e2e", "artifacts");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SPREAD_TRIES = Number(process.env.SPREAD_TRIES || 6);
const MODE = process.env.MODE || "h2";
const CATALOG_ROWS = 500;
const STEP_TIMEOUT = 15000;
if (!["h2", "h1"].includes(MODE)) throw new Error(`MODE must be h2 or h1, not ${MODE}`);

// No network here but the package registries: nothing in the background.
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  ...(MODE === "h1" ? ["--disable-http2"] : []),
];
const SHOTS = MODE === "h2" ? { b: "chat.png", a: "chat-sender.png", catalog: "catalog.png" }
  : { b: "chat-h1.png", a: "chat-h1-sender.png", catalog: "catalog-h1.png" };

const result = { ok: false, mode: MODE, base: BASE, room: ROOM, trust: "nss-db", pages: {}, websockets: [] };
const log = (...a) => console.error("[browser]", ...a);

/** A HOME whose NSS database (~/.pki/nssdb, what Chromium on Linux reads) trusts `ca`. */
function nssHome(ca) {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "switchyard-chromium-home-"));
  const db = path.join(home, ".pki", "nssdb");
  fs.mkdirSync(db, { recursive: true });
  execFileSync("certutil", ["-N", "-d", "sql:" + db, "--empty-password"]);
  if (ca) {
    execFileSync("certutil", ["-A", "-d", "sql:" + db, "-n", "switchyard development CA",
      "-t", "C,,", "-i", ca]);
  }
  return home;
}

async function launch(home) {
  // launch() gives every browser a fresh temporary profile (its own
  // --user-data-dir, removed on close); the NSS db comes from HOME.
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    env: { ...process.env, HOME: home },
    timeout: 60000,
  });
}

/** A header's value from DevTools' header object, whatever the case of its name. */
function header(headers, name) {
  for (const [k, v] of Object.entries(headers || {})) {
    if (k.toLowerCase() === name) return v;
  }
  return null;
}

/** Records, by URL path, how each response of `cdp`'s page arrived: status,
 *  Content-Encoding and Vary (as the browser got them), and the
 *  Accept-Encoding the browser sent (the headers really sent, ExtraInfo). */
function recordEncodings(cdp) {
  const sent = new Map();
  const got = {};
  cdp.on("Network.requestWillBeSentExtraInfo", (e) => {
    sent.set(e.requestId, header(e.headers, "accept-encoding"));
  });
  cdp.on("Network.responseReceived", (e) => {
    got[new URL(e.response.url).pathname] = {
      requestId: e.requestId,
      type: e.type,
      status: e.response.status,
      protocol: e.response.protocol,
      contentEncoding: header(e.response.headers, "content-encoding"),
      vary: header(e.response.headers, "vary"),
    };
  });
  return () => {
    for (const r of Object.values(got)) r.acceptEncoding = sent.get(r.requestId) || null;
    return got;
  };
}

/** Opens the chat page in a new context; records the WebSocket handshakes via CDP. */
async function openChat(browser, name) {
  const context = await browser.newContext({ viewport: { width: 900, height: 760 } });
  const page = await context.newPage();
  page.on("console", (m) => log(`${name} console: ${m.text()}`));
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  const encodings = recordEncodings(cdp);
  const sockets = new Map();
  cdp.on("Network.webSocketCreated", (e) => {
    sockets.set(e.requestId, { page: name, url: e.url });
  });
  cdp.on("Network.webSocketHandshakeResponseReceived", (e) => {
    const s = sockets.get(e.requestId) || { page: name };
    s.status = e.response.status;
    s.statusText = e.response.statusText;
    s.responseHeaders = e.response.headers;
    sockets.set(e.requestId, s);
  });
  cdp.on("Network.webSocketClosed", (e) => {
    const s = sockets.get(e.requestId);
    if (s) s.closedAt = Date.now();
  });
  return { name, context, page, sockets, encodings };
}

/** Navigates and waits until the page's WebSocket is open and said hello. */
async function load(chat) {
  const resp = await chat.page.goto(`${BASE}/?room=${encodeURIComponent(ROOM)}`,
    { waitUntil: "load", timeout: STEP_TIMEOUT });
  if (!resp || resp.status() !== 200) throw new Error(`${chat.name}: page answered ${resp && resp.status()}`);
  await chat.page.waitForFunction(
    () => document.getElementById("ws-state").textContent === "open" &&
      document.getElementById("ws-instance").textContent !== "…",
    null, { timeout: STEP_TIMEOUT });
  const info = await chat.page.evaluate(() => ({
    nextHopProtocol: performance.getEntriesByType("navigation")[0].nextHopProtocol,
    encodedBodySize: performance.getEntriesByType("navigation")[0].encodedBodySize,
    decodedBodySize: performance.getEntriesByType("navigation")[0].decodedBodySize,
    secureContext: window.isSecureContext,
    gunicorn: document.getElementById("instance").textContent,
    isSecure: document.getElementById("is-secure").textContent,
    daphne: document.getElementById("ws-instance").textContent,
    wsState: document.getElementById("ws-state").textContent,
  }));
  info.document = chat.encodings()["/"] || null;
  result.pages[chat.name] = info;
  log(`${chat.name}: page over ${info.nextHopProtocol} from ${info.gunicorn}, ` +
    `WebSocket open on ${info.daphne}`);
  return info;
}

/** The /catalog page in a new tab of `context`: how it and its SVG arrived,
 *  and what rendered (every row; the image decoded). */
async function catalog(context) {
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  const encodings = recordEncodings(cdp);
  try {
    const resp = await page.goto(`${BASE}/catalog?rows=${CATALOG_ROWS}`,
      { waitUntil: "load", timeout: STEP_TIMEOUT });
    if (!resp || resp.status() !== 200) throw new Error(`catalog answered ${resp && resp.status()}`);
    const info = await page.evaluate(() => {
      const nav = performance.getEntriesByType("navigation")[0];
      const img = document.querySelector("h1 img");
      const svg = performance.getEntriesByName(img.src)[0];
      const items = document.querySelectorAll("#catalog tr.item");
      return {
        nextHopProtocol: nav.nextHopProtocol,
        encodedBodySize: nav.encodedBodySize,
        decodedBodySize: nav.decodedBodySize,
        rows: items.length,
        lastRow: items.length ? items[items.length - 1].firstElementChild.textContent : null,
        imgPath: new URL(img.src).pathname,
        imgNaturalWidth: img.naturalWidth,
        imgComplete: img.complete,
        svgEncodedBodySize: svg ? svg.encodedBodySize : null,
        svgDecodedBodySize: svg ? svg.decodedBodySize : null,
      };
    });
    info.expectedRows = CATALOG_ROWS;
    info.responses = encodings();
    const file = path.join(ARTIFACTS, SHOTS.catalog);
    await page.screenshot({ path: file });
    info.screenshot = file;
    log(`catalog: ${info.rows} rows, document ${info.encodedBodySize} -> ${info.decodedBodySize} ` +
      `bytes (${(info.responses["/catalog"] || {}).contentEncoding})`);
    return info;
  } finally {
    await page.close().catch(() => {});
  }
}

async function untrustedAttempt() {
  // The same browser with an empty NSS db must refuse the certificate: the
  // trust above comes from the CA, not from a lenient browser.
  const home = nssHome(null);
  const browser = await launch(home);
  try {
    const page = await browser.newPage();
    try {
      await page.goto(`${BASE}/`, { timeout: STEP_TIMEOUT });
      return "loaded (NOT refused)";
    } catch (e) {
      const m = /net::ERR_[A-Z_]+/.exec(String(e.message));
      return m ? m[0] : String(e.message).split("\n")[0];
    }
  } finally {
    await browser.close();
    fs.rmSync(home, { recursive: true, force: true });
  }
}

async function main() {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  if (MODE === "h2") {
    result.untrusted = await untrustedAttempt();
    log(`without the CA in the NSS db: ${result.untrusted}`);
  }

  const home = nssHome(CA_CERT);
  const browser = await launch(home);
  result.browserVersion = browser.version();
  const chats = [];
  try {
    const a = await openChat(browser, "a");
    const b = await openChat(browser, "b");
    chats.push(a, b);
    await load(a);
    await load(b);
    // Try to put b on the other daphne instance, so the message has to cross
    // Redis (bounded; the test reports where they landed).
    for (let i = 0; i < SPREAD_TRIES && result.pages.b.daphne === result.pages.a.daphne; i++) {
      await load(b);
    }
    result.spread = result.pages.a.daphne !== result.pages.b.daphne;

    const text = `hello from browser a ${crypto.randomBytes(3).toString("hex")}`;
    result.message = text;
    await a.page.fill("#message", text);
    await a.page.press("#message", "Enter");
    const seen = async (chat) => {
      const loc = chat.page.locator("#log .message", { hasText: text });
      await loc.waitFor({ timeout: STEP_TIMEOUT });
      return loc.first().textContent();
    };
    result.received = { b: await seen(b), a: await seen(a) };
    log(`b shows: ${result.received.b}`);
    result.catalog = await catalog(a.context);
    result.ok = true;
  } finally {
    for (const chat of chats) {
      const file = path.join(ARTIFACTS, SHOTS[chat.name]);
      try {
        await chat.page.screenshot({ path: file, fullPage: true });
        result[chat.name === "b" ? "screenshot" : "screenshotSender"] = file;
      } catch (e) {
        log(`screenshot of ${chat.name} failed: ${e.message}`);
      }
    }
    for (const chat of chats) {
      // Close the pages first so each WebSocket ends with a close handshake.
      await chat.page.close().catch(() => {});
      for (const s of chat.sockets.values()) result.websockets.push(s);
    }
    await browser.close();
    fs.rmSync(home, { recursive: true, force: true });
  }
}

main().then(
  () => { console.log(JSON.stringify(result)); },
  (e) => {
    result.ok = false;
    result.error = String(e && e.stack || e);
    console.log(JSON.stringify(result));
    process.exitCode = 1;
  });
