// The daemon's CPU with the console page closed and open in N headless Chromiums,
// alternated in one run (for BENCHMARKS.md, *The console*). N browsers (one Chromium
// each) stay up the whole run, so their own CPU is there in every window: a window
// "off" has every page on about:blank, a window "on" has every page on the console
// (`/`, with its `/events` stream and its `/console/status` polls). Each window reads
// utime+stime of the daemon from /proc/<pid>/stat at its start and end.
// Args: <url> <daemon pid> <pages> <rounds> <window secs>. Prints one JSON line per
// window, then a summary line.
import { createRequire } from "node:module";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFileSync } from "node:child_process";

const require = createRequire(join(process.env.PLAYWRIGHT_DIR, "node_modules", "x.js"));
const { chromium } = require("playwright-core");
const [url, pid, n, rounds, secs] = [process.argv[2], Number(process.argv[3]),
  Number(process.argv[4] || 5), Number(process.argv[5] || 4), Number(process.argv[6] || 30)];
const SETTLE_MS = 5000;
const tck = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim());
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Fields 14 and 15 of /proc/<pid>/stat, counted after the ")" that ends the name.
const ticks = () => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]);
};
const clients = async () => {
  const r = await fetch(new URL("/console/status", url));
  return (await r.json()).eventClients;
};

const dirs = [], pages = [], ctxs = [];
for (let i = 0; i < n; i++) {
  const dir = mkdtempSync(join(tmpdir(), "gdbf-console-cpu-"));
  dirs.push(dir);
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  ctxs.push(ctx);
  pages.push(ctx.pages()[0] || await ctx.newPage());
}

const results = { off: [], on: [] };
for (let r = 0; r < rounds; r++) {
  // off, on in even rounds; on, off in odd ones: a drift in the machine's load
  // weighs on both alike.
  const order = r % 2 === 0 ? ["off", "on"] : ["on", "off"];
  for (const mode of order) {
    await Promise.all(pages.map((p) => p.goto(mode === "on" ? url : "about:blank")));
    await sleep(SETTLE_MS);
    const streams = await clients();
    const [t0, w0] = [ticks(), performance.now()];
    await sleep(secs * 1000);
    const [t1, w1] = [ticks(), performance.now()];
    const pct = ((t1 - t0) / tck) / ((w1 - w0) / 1000) * 100;
    results[mode].push(pct);
    console.log(JSON.stringify({ round: r, mode, pages: mode === "on" ? n : 0, eventStreams: streams,
      secs: +((w1 - w0) / 1000).toFixed(1), cpuPctOfCore: +pct.toFixed(2) }));
  }
}
const mean = (a) => a.reduce((x, y) => x + y, 0) / a.length;
const diffs = results.on.map((v, i) => v - results.off[i]);
console.log(JSON.stringify({
  summary: true, pages: n, rounds, windowSecs: secs,
  offMean: +mean(results.off).toFixed(2), onMean: +mean(results.on).toFixed(2),
  diffMean: +mean(diffs).toFixed(2), diffMin: +Math.min(...diffs).toFixed(2),
  diffMax: +Math.max(...diffs).toFixed(2), diffs: diffs.map((d) => +d.toFixed(2)),
}));
for (const c of ctxs) await c.close();
for (const d of dirs) rmSync(d, { recursive: true, force: true });
process.exit(0);
