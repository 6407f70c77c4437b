// Keeps N console pages open in one headless Chromium for S seconds (for the CPU
// measurement in BENCHMARKS.md, *The console*). Args: <url> <pages> <seconds>.
import { createRequire } from "node:module";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const require = createRequire(join(process.env.PLAYWRIGHT_DIR, "node_modules", "x.js"));
const { chromium } = require("playwright-core");
const [url, n, secs] = [process.argv[2], Number(process.argv[3] || 5), Number(process.argv[4] || 60)];
const dirs = [], ctxs = [];
for (let i = 0; i < n; i++) {
  const dir = mkdtempSync(join(tmpdir(), "gdbf-console-open-"));
  dirs.push(dir);
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = ctx.pages()[0] || await ctx.newPage();
  await page.goto(url);
  ctxs.push(ctx);
}
console.log(JSON.stringify({ open: n }));
await new Promise((r) => setTimeout(r, secs * 1000));
for (const c of ctxs) await c.close();
for (const d of dirs) rmSync(d, { recursive: true, force: true });
process.exit(0);
