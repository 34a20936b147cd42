// Drives mailsrv's HTTP API with the `mailpit-api` npm client (the one Mailpit users' test suites
// use), as test/e2e/http.py's http_mailpit_api_client runs it:
//   node mailpit_api.mjs BASE_URL TOKEN   (the messages were sent over SMTP before; see there)
// Prints one line per check; exits 1 at the first that fails.
import { MailpitClient } from "mailpit-api";
import assert from "node:assert/strict";

const [base, token] = process.argv.slice(2);
const mp = new MailpitClient(base);
let n = 0;
async function step(what, fn) {
  try {
    await fn();
    n++;
    console.log("ok " + what);
  } catch (e) {
    console.log("FAIL " + what + ": " + (e && e.stack ? e.stack : e));
    process.exit(1);
  }
}

const KOI8 = "Привет из класса";
const CP1251 = "Проверка windows-1251";
let rich, plain;

await step("getInfo", async () => {
  const info = await mp.getInfo();
  assert.equal(info.Messages, 3);
  assert.equal(info.Unread, 3);
  assert.match(info.Version, /mailsrv/);
});
await step("getConfiguration (webui)", async () => {
  const c = await mp.getConfiguration();
  assert.equal(typeof c.MessageRelay.Enabled, "boolean");
});
await step("listMessages: newest first, Mailpit's fields", async () => {
  const l = await mp.listMessages(0, 50);
  assert.equal(l.total, 3);
  assert.equal(l.messages_count, 3);
  assert.equal(l.messages.length, 3);
  assert.deepEqual(l.messages.map((m) => m.Subject), ["Plain " + token, CP1251, KOI8]);
  for (const m of l.messages) {
    assert.ok(Array.isArray(m.To) && Array.isArray(m.Cc) && Array.isArray(m.Bcc) && Array.isArray(m.ReplyTo));
    assert.ok(!Number.isNaN(Date.parse(m.Created)));
    assert.equal(typeof m.Size, "number");
  }
  [plain, , rich] = l.messages;
  const page = await mp.listMessages(1, 1);
  assert.equal(page.messages.length, 1);
  assert.equal(page.start, 1);
  assert.equal(page.messages[0].Subject, CP1251);
});
await step("getMessageSummary: KOI8-R subject, windows-1251 text, attachment", async () => {
  const m = await mp.getMessageSummary(rich.ID);
  assert.equal(m.Subject, KOI8);
  assert.equal(m.From.Name, "Иван Петров");
  assert.equal(m.Text.trim(), "Текст письма " + token);
  assert.match(m.HTML, /<p>HTML/);
  assert.equal(m.Attachments.length, 1);
  assert.equal(m.Attachments[0].FileName, "Отчёт.txt");
  const w = await mp.getMessageSummary(); // "latest"
  assert.equal(w.ID, plain.ID);
});
await step("getMessageAttachment: the bytes", async () => {
  const m = await mp.getMessageSummary(rich.ID);
  const blob = await mp.getMessageAttachment(rich.ID, m.Attachments[0].PartID);
  const got = Buffer.from(await blob.arrayBuffer());
  const want = Buffer.alloc(1024);
  for (let i = 0; i < 1024; i++) want[i] = i % 256;
  assert.ok(got.equals(want), "attachment bytes differ: " + got.length);
  assert.equal(blob.type, "application/octet-stream");
});
await step("getMessageHeaders and getMessageSource", async () => {
  const h = await mp.getMessageHeaders(rich.ID);
  assert.deepEqual(h.Subject, [KOI8]);
  const src = await mp.getMessageSource(rich.ID);
  assert.match(src, /Content-Type: multipart\/mixed/);
});
await step("renderMessageHTML and renderMessageText", async () => {
  assert.match(await mp.renderMessageHTML(rich.ID), /<p>HTML/);
  assert.match(await mp.renderMessageText(rich.ID), new RegExp("Текст письма " + token));
});
await step("searchMessages and waitForMessage", async () => {
  const r = await mp.searchMessages({ query: "subject:windows-1251" });
  assert.equal(r.messages_count, 1);
  assert.equal(r.messages[0].Subject, CP1251);
  const m = await mp.waitForMessage({ query: "привет" }, { timeout: 3000, interval: 100 });
  assert.equal(m.ID, rich.ID);
  const none = await mp.searchMessages({ query: "from:nobody.invalid" });
  assert.equal(none.messages_count, 0);
});
await step("setReadStatus by IDs and by search", async () => {
  assert.equal(await mp.setReadStatus({ IDs: [rich.ID], Read: true }), "ok");
  let l = await mp.listMessages();
  assert.equal(l.unread, 2);
  assert.equal(l.messages.find((m) => m.ID === rich.ID).Read, true);
  assert.equal(await mp.setReadStatus({ Search: "subject:windows-1251", Read: true }), "ok");
  l = await mp.listMessages();
  assert.equal(l.unread, 1);
  assert.equal(await mp.setReadStatus({ Read: false }), "ok");
  assert.equal((await mp.listMessages()).unread, 3);
});
await step("endpoints mailsrv does not offer answer a clear 404", async () => {
  await assert.rejects(mp.htmlCheck(rich.ID), /404/);
  await assert.rejects(mp.getTags(), /404/);
});
await step("deleteMessagesBySearch, deleteMessages by IDs, then all", async () => {
  assert.equal(await mp.deleteMessagesBySearch({ query: "subject:windows-1251" }), "ok");
  assert.equal((await mp.listMessages()).total, 2);
  assert.equal(await mp.deleteMessages({ IDs: [plain.ID] }), "ok");
  const l = await mp.listMessages();
  assert.deepEqual(l.messages.map((m) => m.ID), [rich.ID]);
  assert.equal(await mp.deleteMessages(), "ok");
  assert.equal((await mp.listMessages()).total, 0);
  await assert.rejects(mp.getMessageSummary(rich.ID), /404/);
});
console.log(n + " checks passed");
