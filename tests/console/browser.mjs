// Drives headless Chromium (playwright-core) through the console page, for
// tests/console_browser.rs. Args: <page url>. Stdin: lines "expect <peers> [<peer id>]",
// "catchup" (the catch-up time chart names a catch-up served, with its time) and "quit".
// Stdout: one JSON line per expectation, then a summary line. Every request the page
// makes is intercepted: anything not on 127.0.0.1 is recorded and refused.
import { createRequire } from "node:module";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import readline from "node:readline";

const require = createRequire(join(process.env.PLAYWRIGHT_DIR, "node_modules", "x.js"));
const { chromium } = require("playwright-core");

const url = process.argv[2];
const shot = process.env.SCREENSHOT || "";
const userDir = mkdtempSync(join(tmpdir(), "gdbf-console-chromium-"));
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");

const ctx = await chromium.launchPersistentContext(userDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const external = [], errors = [], requests = [];
await ctx.route("**/*", (route) => {
  const u = new URL(route.request().url());
  requests.push(u.href);
  if (u.hostname !== "127.0.0.1") { external.push(u.href); return route.abort(); }
  return route.continue();
});
const page = ctx.pages()[0] || await ctx.newPage();
page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
page.on("pageerror", (e) => errors.push(String(e)));
await page.goto(url, { waitUntil: "load" });
await page.waitForFunction(() => document.getElementById("live").textContent === "live", null, { timeout: 15000 });

const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  const [cmd, n, id] = line.trim().split(/\s+/);
  if (cmd === "quit") break;
  if (cmd === "catchup") {
    let ok = true;
    try {
      await page.waitForFunction(() => /^last: (full|delta) \d+ ms/.test(document.getElementById("c-ctime-v").textContent),
        null, { timeout: 15000, polling: 100 });
    } catch (_) { ok = false; }
    say({ catchup: true, ok, shown: await page.textContent("#c-ctime-v") });
    continue;
  }
  if (cmd !== "expect") continue;
  const t0 = Date.now();
  let ok = true;
  try {
    await page.waitForFunction(([n, id]) => {
      if (document.getElementById("peer-count").textContent !== n) return false;
      if (!id) return true;
      return [...document.querySelectorAll("#events tr")].some((tr) => tr.textContent.includes("join") && tr.textContent.includes(id));
    }, [n, id || ""], { timeout: Number(process.env.WAIT_MS || 2000), polling: 50 });
  } catch (_) { ok = false; }
  say({ expect: Number(n), peer: id || null, ok, ms: Date.now() - t0,
    shown: await page.textContent("#peer-count") });
}
await page.waitForTimeout(300);
if (shot) {
  await page.waitForTimeout(1500);
  await page.screenshot({ path: shot, fullPage: true });
}
say({ summary: true, external, errors, requests: requests.length });
await Promise.race([ctx.close(), new Promise((r) => setTimeout(r, 5000))]);
rmSync(userDir, { recursive: true, force: true });
process.exit(0);
