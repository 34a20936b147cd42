// The web page's time to first render, for `make bench` (test/bench.py's http part):
//   node first_render.mjs BASE_URL USER PASSWORD CHROMIUM [RUNS]
// Prints one JSON line: each run's milliseconds from the navigation's start to the page's
// 'mailsrv-first-render' mark (the first list drawn), each in a fresh browser context (no cache,
// the login made anew, as a new visitor's).
import { chromium } from "playwright-core";

const [base, user, pass, exe, runsArg] = process.argv.slice(2);
const runs = Number(runsArg || 5);
const browser = await chromium.launch({ executablePath: exe, chromiumSandbox: false, args: ["--disable-gpu"] });
const ms = [];
for (let i = 0; i < runs; i++) {
  const ctx = await browser.newContext({ httpCredentials: { username: user, password: pass } });
  const page = await ctx.newPage();
  await page.goto(base + "/");
  await page.waitForSelector("body[data-ready='1']", { timeout: 60000 });
  ms.push(await page.evaluate(() => performance.getEntriesByName("mailsrv-first-render")[0].startTime));
  await ctx.close();
}
await browser.close();
console.log(JSON.stringify({ first_render_ms: ms }));
