// Drives mailsrv's web page in Debian's Chromium through playwright-core (nothing downloaded), as
// test/e2e/web.py runs it:   node web.mjs SCENARIO CONFIG_JSON
// The scenario prints one line per check ("ok ..." or "FAIL ...", then exit 1). Where the Python
// side must act (send mail over SMTP, look through POP3, count the canary's requests), it prints
// "NEED what args" and waits for one line on stdin ("done" or "fail why").
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { createInterface } from "node:readline";
import fs from "node:fs";

const [scenario, cfgText] = process.argv.slice(2);
const cfg = JSON.parse(cfgText);
const base = cfg.base;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
let browser;

async function need(what) {
  console.log("NEED " + what);
  const r = await lines.next();
  if (r.done || r.value !== "done") throw new Error("the test's side: " + (r.done ? "closed" : r.value));
}

async function step(what, fn) {
  try {
    await fn();
    console.log("ok " + what);
  } catch (e) {
    console.log("FAIL " + what + ": " + (e && e.stack ? e.stack : e));
    if (browser) await browser.close().catch(() => {});
    process.exit(1);
  }
}

const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 375, height: 740 };

// A browser page logged in as user (HTTP Basic, as the browser's login prompt would) that fails the
// run on any console error or uncaught exception of the page.
async function open(user, opts = {}) {
  const ctx = await browser.newContext({
    httpCredentials: user ? { username: user[0], password: user[1] } : undefined,
    viewport: opts.viewport || DESKTOP,
    locale: opts.locale || "en-US",
    acceptDownloads: true,
  });
  const page = await ctx.newPage();
  page.errors = [];
  page.on("console", (m) => { if (m.type() === "error") page.errors.push("console: " + m.text()); });
  page.on("pageerror", (e) => page.errors.push("pageerror: " + e.message));
  return page;
}

function noErrors(page) {
  assert.deepEqual(page.errors.filter((e) => !(cfg.allowErrors || []).some((a) => e.includes(a))), []);
}

async function ready(page, path = "/") {
  const t0 = Date.now();
  await page.goto(base + path);
  await page.waitForSelector("body[data-ready='1']", { timeout: 15000 });
  return Date.now() - t0;
}

async function shot(page, name) {
  await page.screenshot({ path: `${cfg.out}/web-${name}.png`, fullPage: false });
}

const row = (page, subject) => page.locator("#list .msg", { hasText: subject });

async function openMessage(page, subject) {
  await row(page, subject).first().locator(".subject").click();
  await page.waitForFunction((s) => {
    const e = document.querySelector("#msg-subject");
    return e && e.textContent.includes(s) && !document.querySelector("#view-message").hidden;
  }, subject, { timeout: 10000 });
}

async function scenarioMain() {
  const admin = [cfg.admin, cfg.adminPass];
  const user = [cfg.user, cfg.userPass];
  const t = cfg.token;
  let page, richId;

  await step("the page loads for an admin with no console error", async () => {
    page = await open(admin);
    const ms = await ready(page);
    console.log("first render " + ms + " ms");
    assert.equal(await page.evaluate(() => document.documentElement.lang), "en");
    noErrors(page);
    await shot(page, "list-desktop");
  });

  await step("a message sent over SMTP appears without a reload, with the unread count in the title", async () => {
    await page.evaluate(() => { window.__notReloaded = true; });
    await need("send-rich");
    await row(page, "Rich " + t).first().waitFor({ timeout: 10000 });
    assert.equal(await page.evaluate(() => window.__notReloaded), true);
    await page.waitForFunction(() => /^\(\d+\)/.test(document.title), null, { timeout: 5000 });
    const r = row(page, "Rich " + t).first();
    assert.ok(await r.evaluate((e) => e.classList.contains("unread")), "unread mark");
    assert.ok(await r.locator(".att").count() > 0, "attachment mark");
    assert.match(await r.locator(".from").textContent(), /Shop|shop@client\.test/);
  });

  await step("opening it shows the HTML rendering (cid image inline), the text, and the attachment link", async () => {
    await openMessage(page, "Rich " + t);
    richId = await page.evaluate(() => decodeURIComponent(location.hash.split("/").pop()));
    const frameEl = page.locator("#msg-html");
    const sandbox = await frameEl.getAttribute("sandbox");
    assert.ok(sandbox !== null && !/allow-scripts|allow-forms|allow-top-navigation/.test(sandbox), "sandbox: " + sandbox);
    const frame = await (await frameEl.elementHandle()).contentFrame();
    await frame.waitForSelector("b.rich", { timeout: 10000 });
    assert.equal(await frame.locator("b.rich").textContent(), "Bold " + t);
    await frame.waitForFunction(() => { const i = document.querySelector("img#logo"); return i && i.complete && i.naturalWidth === 2; },
      null, { timeout: 10000 });
    assert.match(await page.locator("#msg-from").textContent(), /shop@client\.test/);
    noErrors(page);
    // a link in the mail opens a tab of its own; the message stays shown
    // (a real mouse click where the link is: Playwright's own click runs script in the frame, which
    // its sandbox refuses, and says so on the console)
    const box = await frame.locator("a#shop").boundingBox();
    const [tab] = await Promise.all([page.context().waitForEvent("page", { timeout: 5000 }),
      page.mouse.click(box.x + box.width / 2, box.y + box.height / 2)]);
    assert.ok(tab.url().includes("shop-link"), "the new tab: " + tab.url());
    await tab.close();
    // Playwright sets its helpers up in every frame when a page opens a tab; the frame's sandbox
    // refuses them and Chromium logs it (this mail has no script: the XSS test looks at real ones)
    page.errors = page.errors.filter((e) => !/Blocked script execution in '[^']*\/view\/[^']*' because the document's frame is sandboxed/.test(e));
    assert.equal(await frame.locator("b.rich").count(), 1, "the message is still in its frame");
    await shot(page, "message-desktop");
    await page.locator("[data-tab='text']").click();
    await page.waitForFunction((s) => document.querySelector("#msg-text")?.textContent.includes(s), "Plain text " + t);
    await page.locator("[data-tab='headers']").click();
    await page.waitForFunction(() => document.querySelector("#msg-headers")?.textContent.includes("X-Shop"));
    await page.locator("[data-tab='raw']").click();
    await page.waitForFunction((s) => document.querySelector("#msg-raw")?.textContent.includes(s), "Message-ID: <rich" + t);
    const link = page.locator("#msg-attachments a", { hasText: "report.bin" });
    assert.equal(await link.count(), 1);
    const [dl] = await Promise.all([page.waitForEvent("download"), link.click()]);
    const got = fs.readFileSync(await dl.path());
    assert.equal(got.toString("base64"), cfg.attachment);
    assert.equal(dl.suggestedFilename(), "report.bin");
    noErrors(page);
  });

  await step("forwarding (release) sends it on to another address", async () => {
    await page.fill("#release-to", cfg.forwardTo);
    await page.locator("#release-form button").click();
    await need("released " + cfg.forwardTo);
    noErrors(page);
  });

  await step("opening marked it read (Maildir; an mbox keeps no read marks)", async () => {
    await page.keyboard.press("Escape");
    await page.waitForFunction(() => !document.querySelector("#view-list").hidden);
    if (!cfg.readMarks) return;
    // by its ID: the forwarded copy in carol's mailbox, which an admin sees too, is unread
    await page.waitForFunction((id) => {
      const r = [...document.querySelectorAll("#list .msg")].find((e) => e.dataset.id === id);
      return r && !r.classList.contains("unread");
    }, richId, { timeout: 5000 });
    // and Mark as unread in the message view, then u on the list's row, then / to search
    const unreadRow = (id) => page.waitForFunction((id) => [...document.querySelectorAll("#list .msg")]
      .find((e) => e.dataset.id === id)?.classList.contains("unread"), id, { timeout: 5000 });
    const readRow = (id) => page.waitForFunction((id) => [...document.querySelectorAll("#list .msg")]
      .find((e) => e.dataset.id === id)?.classList.contains("unread") === false, id, { timeout: 5000 });
    await page.goto(base + "/#/message/" + encodeURIComponent(richId));
    await page.waitForFunction((s) => document.querySelector("#msg-subject")?.textContent.includes(s), "Rich " + t);
    await page.locator("#btn-unread").click();
    await page.keyboard.press("Escape");
    await unreadRow(richId);
    await page.goto(base + "/#/message/" + encodeURIComponent(richId)); // read again
    await page.waitForFunction((s) => document.querySelector("#msg-subject")?.textContent.includes(s), "Rich " + t);
    await page.keyboard.press("Escape");
    await readRow(richId);
    await page.keyboard.press("u"); // the current row is the one just open
    await unreadRow(richId);
    await page.keyboard.press("/");
    assert.equal(await page.evaluate(() => document.activeElement.id), "search");
  });

  await step("search finds it, and finds nothing for a word it lacks", async () => {
    await page.fill("#search", "subject:" + t);
    await page.press("#search", "Enter");
    await page.waitForFunction((s) => document.querySelectorAll("#list .msg").length >= 1 &&
      [...document.querySelectorAll("#list .msg")].every((e) => e.textContent.includes(s)), t, { timeout: 10000 });
    await shot(page, "search-desktop");
    await page.fill("#search", "nosuchword" + t);
    await page.press("#search", "Enter");
    await page.waitForFunction(() => document.querySelectorAll("#list .msg").length === 0 &&
      document.querySelector("#empty") && !document.querySelector("#empty").hidden, null, { timeout: 10000 });
    await page.goto(base + "/#/");
    await page.waitForSelector("body[data-ready='1']");
  });

  await step("an admin sees the queue with each recipient's state and error", async () => {
    await page.locator("#nav-queue").click();
    await page.waitForFunction((a) => !document.querySelector("#view-queue").hidden &&
      document.querySelector("#view-queue").textContent.includes(a), cfg.queued, { timeout: 10000 });
    const text = await page.locator("#view-queue").textContent();
    assert.match(text, /pending/);
    assert.match(text, /refused|connect|timed out|unreachable/i);
    await shot(page, "queue-desktop");
  });

  await step("the queue: retry now, the view follows the retry to its end by itself, then delete the entry", async () => {
    await need("slow-next-hop");
    await page.locator("#btn-flush").click();
    await need("queue-retried");
    await page.waitForFunction(() => document.querySelector("#view-queue tr.active"), null, { timeout: 10000 });
    // no event announces the end of a retry: the page looks again by itself (a delete during it answers 409)
    await page.waitForFunction(() => !document.querySelector("#view-queue tr.active"), null, { timeout: 15000 });
    page.once("dialog", (d) => d.accept());
    await page.locator("#view-queue .q-delete").first().click();
    await page.waitForFunction((a) => !document.querySelector("#view-queue").textContent.includes(a), cfg.queued,
      { timeout: 10000 });
    await need("queue-empty");
  });

  await step("an admin sees a list's members with their proof of consent", async () => {
    await page.locator("#nav-lists").click();
    await page.waitForFunction((a) => !document.querySelector("#view-lists").hidden &&
      document.querySelector("#view-lists").textContent.includes(a), cfg.member, { timeout: 10000 });
    const text = await page.locator("#view-lists").textContent();
    assert.ok(text.includes(cfg.list) && text.includes(cfg.memberIp), "list and the confirming address");
    await shot(page, "lists-desktop");
  });

  await step("an admin sees the status: sessions and listeners with TLS", async () => {
    await page.locator("#nav-status").click();
    await page.waitForFunction(() => !document.querySelector("#view-status").hidden &&
      /127\.0\.0\.1:\d+/.test(document.querySelector("#view-status").textContent), null, { timeout: 10000 });
    await shot(page, "status-desktop");
    noErrors(page);
  });

  await step("the keyboard: j/k move, Enter opens, Delete deletes (and POP3 no longer lists it)", async () => {
    await page.goto(base + "/#/");
    await page.waitForSelector("body[data-ready='1']");
    await row(page, "Second " + t).first().waitFor();
    await page.locator("body").click({ position: { x: 5, y: 5 } }).catch(() => {});
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    // find the row's position and walk there with j
    const subjects = await page.locator("#list .msg .subject").allTextContents();
    const at = subjects.findIndex((s) => s.includes("Second " + t));
    assert.ok(at >= 0);
    await page.keyboard.press("j");
    for (let i = 0; i < at; i++) await page.keyboard.press("j");
    await page.keyboard.press("k");
    await page.keyboard.press("j");
    assert.match(await page.locator("#list .msg.current").textContent(), new RegExp("Second " + t));
    await page.keyboard.press("Enter");
    await page.waitForFunction((s) => document.querySelector("#msg-subject")?.textContent.includes(s), "Second " + t);
    const id = await page.evaluate(() => location.hash.split("/").pop());
    await page.keyboard.press("Delete");
    await page.waitForFunction((s) => ![...document.querySelectorAll("#list .msg")].some((e) => e.textContent.includes(s)),
      "Second " + t, { timeout: 10000 });
    await need("pop3-gone " + id);
  });

  await step("at phone width every view fits (no sideways scrolling)", async () => {
    const p = await open(admin, { viewport: PHONE });
    await ready(p);
    const fits = () => document.documentElement.scrollWidth <= window.innerWidth + 1;
    assert.ok(await p.evaluate(fits), "list fits");
    await shot(p, "list-phone");
    await openMessage(p, "Rich " + t);
    assert.ok(await p.evaluate(fits), "message fits");
    await shot(p, "message-phone");
    for (const v of ["queue", "lists", "status"]) {
      await p.goto(base + "/#/" + v);
      await p.waitForFunction((v) => !document.querySelector("#view-" + v).hidden, v);
      await p.waitForTimeout(300);
      assert.ok(await p.evaluate(fits), v + " fits");
      await shot(p, v + "-phone");
    }
    noErrors(p);
    await p.context().close();
  });

  await step("a user who is not an admin sees only their mailbox, and no admin page", async () => {
    const p = await open(user);
    await ready(p);
    for (const id of ["#nav-queue", "#nav-lists", "#nav-status"]) assert.equal(await p.locator(id).isVisible(), false, id);
    const text = await p.locator("#list").textContent();
    assert.ok(text.includes("For bob " + t) && !text.includes("Rich " + t), "bob's list");
    noErrors(p);
    const st = await p.evaluate(async () => (await fetch("/api/v1/queue")).status);
    assert.equal(st, 403);
    await p.context().close();
  });

  await step("in Russian when the browser asks for it", async () => {
    const p = await open(user, { locale: "ru-RU" });
    await ready(p);
    assert.equal(await p.evaluate(() => document.documentElement.lang), "ru");
    // every text of the page's frame that is translated is not the English one any more
    const texts = (pg) => pg.evaluate(() => Object.fromEntries([...document.querySelectorAll("[data-i18n]")]
      .map((n) => [n.dataset.i18n, n.textContent.trim()])));
    const en = await open(user);
    await ready(en);
    const [enText, ruText] = [await texts(en), await texts(p)];
    await en.context().close();
    const same = Object.keys(enText).filter((k) => enText[k] && enText[k] === ruText[k]);
    assert.deepEqual(same, [], "left in English");
    assert.match(await p.locator("body").textContent(), /[А-Яа-яЁё]{4}/);
    await shot(p, "list-russian");
    noErrors(p);
    await p.context().close();
  });
}

// Mail built to attack the page: nothing of it may run, and nothing may be loaded from the canary
// until the reader asks for remote images.
async function scenarioXss() {
  const admin = [cfg.admin, cfg.adminPass];
  const page = await open(admin);
  await ready(page);
  const flagged = async () => page.evaluate(() => {
    const seen = [window.__xss];
    for (const f of document.querySelectorAll("iframe")) { try { seen.push(f.contentWindow.__xss); } catch (e) { /* opaque */ } }
    return seen.filter((x) => x !== undefined);
  });
  await step("the list shows every hostile subject and name as text", async () => {
    await page.waitForFunction((n) => document.querySelectorAll("#list .msg").length >= n, cfg.count, { timeout: 10000 });
    const text = await page.locator("#list").textContent();
    assert.ok(text.includes("<script>"), "the subject's markup shown as text");
    assert.equal(await page.locator("#list script, #list img, #list svg, #list iframe").count(), 0);
    assert.deepEqual(await flagged(), []);
  });
  for (const subject of cfg.subjects) {
    await step("opening " + JSON.stringify(subject.slice(0, 60)) + " runs nothing", async () => {
      await page.goto(base + "/#/");
      await page.waitForSelector("body[data-ready='1']");
      await row(page, subject).first().locator(".subject").click();
      await page.waitForFunction(() => !document.querySelector("#view-message").hidden);
      await page.waitForTimeout(400);
      for (const tab of ["html", "text", "headers", "raw"]) {
        const b = page.locator(`[data-tab='${tab}']`);
        if (await b.count() && await b.isVisible() && await b.isEnabled()) { await b.click(); await page.waitForTimeout(150); }
      }
      const fr = page.locator("#msg-html");
      if (await fr.count()) {
        const frame = await (await fr.elementHandle()).contentFrame();
        for (const a of await frame.locator("a").all()) await a.click({ timeout: 2000, noWaitAfter: true }).catch(() => {});
        await page.waitForTimeout(300);
      }
      for (const a of await page.locator("#msg-attachments a").all()) {
        const href = await a.getAttribute("href");
        assert.ok(href.startsWith("/api/v1/message/"), "attachment link: " + href);
      }
      assert.equal(await page.evaluate(() => document.querySelectorAll("#view-message script").length), 0);
      assert.deepEqual(await flagged(), []);
      assert.equal(page.url().startsWith(base), true, "still on the page: " + page.url());
    });
  }
  await step("an SVG attachment opened in its own tab runs nothing", async () => {
    const p2 = await page.context().newPage();
    p2.on("dialog", (d) => d.dismiss());
    await p2.goto(base + cfg.svgUrl).catch(() => {}); // a download for the browser, or a sandboxed document
    await p2.waitForTimeout(500);
    const v = await p2.evaluate(() => window.__xss).catch(() => undefined);
    assert.equal(v, undefined);
    await p2.close();
  });
  await step("the canary got no request while the mail was read", async () => {
    await need("canary-zero");
  });
  await step("asking for remote images loads them (the canary's control)", async () => {
    await page.goto(base + "/#/");
    await page.waitForSelector("body[data-ready='1']");
    await row(page, cfg.pixelSubject).first().locator(".subject").click();
    await page.waitForFunction(() => !document.querySelector("#view-message").hidden);
    await page.locator("#btn-remote").click();
    await need("canary-pixel");
    assert.deepEqual(await flagged(), []);
  });
  await shot(page, "xss-desktop");
  noErrors(page);
}

// Many messages at once: "Load more" to the end, then select all, mark read, delete selected.
async function scenarioBulk() {
  const page = await open(null);
  await ready(page);
  await step("Load more pages through the whole list", async () => {
    for (let i = 0; i < 20 && await page.locator("#btn-more").isVisible(); i++) {
      const n = await page.locator("#list .msg").count();
      await page.locator("#btn-more").click();
      await page.waitForFunction((n) => document.querySelectorAll("#list .msg").length > n, n, { timeout: 10000 });
    }
    assert.equal(await page.locator("#list .msg").count(), cfg.count);
  });
  await step("select all, mark read", async () => {
    await page.locator("#sel-all").check();
    await page.locator("#btn-read-selected").click();
    await page.waitForFunction(() => document.querySelectorAll("#list .msg.unread").length === 0, null, { timeout: 10000 });
    await need("all-read");
  });
  await step("select all, delete selected: the list, the API and POP3 are empty", async () => {
    await page.locator("#sel-all").check();
    await page.locator("#btn-delete-selected").click();
    await page.waitForFunction(() => document.querySelectorAll("#list .msg").length === 0, null, { timeout: 20000 });
    await need("all-gone");
  });
  noErrors(page);
}

browser = await chromium.launch({
  executablePath: cfg.chromium,
  chromiumSandbox: false, // CI runs as root, where Chromium's own sandbox cannot start
  args: ["--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--metrics-recording-only", "--disable-default-apps"],
});
if (scenario === "main") await scenarioMain();
else if (scenario === "xss") await scenarioXss();
else if (scenario === "bulk") await scenarioBulk();
else throw new Error("no scenario " + scenario);
await browser.close();
console.log("all checks passed");
process.exit(0);
