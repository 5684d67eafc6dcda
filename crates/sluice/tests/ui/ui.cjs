// The web UI in headless Chromium, driven by playwright-core: run by
// crates/sluice/tests/ui.rs against a `sluice serve` of examples/serve.
//
// Environment: SLUICE_URL (the server), SLUICE_ADMIN_TOKEN,
// SLUICE_VIEWER_TOKEN, SLUICE_REVOKE (a shell command that revokes the
// admin token), SLUICE_PLAYWRIGHT_CORE (the module's folder), SLUICE_CHROMIUM
// (the browser), SLUICE_SHOTS (a folder for the screenshots).
"use strict";
const { execSync } = require("node:child_process");
const path = require("node:path");
const { chromium } = require(process.env.SLUICE_PLAYWRIGHT_CORE);

const base = process.env.SLUICE_URL;
const shots = process.env.SLUICE_SHOTS;
let step = "start";
const check = (cond, what) => {
  if (!cond) throw new Error(`${step}: ${what}`);
};

async function post(p, body, token) {
  const r = await fetch(base + p, {
    method: "POST",
    headers: { "content-type": p === "/events" ? "application/cloudevents+json" : "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json().catch(() => null) };
}
async function shot(page, name) {
  if (shots) await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}
/** Go to a page of the UI and wait until it is shown (not the page before). */
async function open(page, hash) {
  await page.goto(base + "/" + hash);
  await page.waitForFunction(() => document.body.dataset.shown === location.hash, null, { timeout: 10000 });
}
async function text(page, selector) {
  await page.waitForSelector(selector);
  return page.locator(selector).first().innerText();
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.SLUICE_CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error" && !/status of (40[0-9]|422)/.test(m.text())) errors.push(m.text()); });
  const admin = process.env.SLUICE_ADMIN_TOKEN;
  try {
    // Data to look at: a succeeded, a failed and an incident run.
    const ok = await post("/hooks/orders", { orderId: "A1", items: [{ qty: 2, price: 3.5 }] });
    check(ok.status === 200 && ok.body.total === 7, `orders: ${JSON.stringify(ok)}`);
    const empty = await post("/hooks/orders", { orderId: "A2" });
    check(empty.status === 500 && empty.body.details.status === "failed", `empty order: ${JSON.stringify(empty)}`);
    const failedRun = empty.body.details.runId;
    const bad = await post("/hooks/invoices", { invoice: "I-7", amount: "ten" });
    check(bad.status === 422 && bad.body.details.status === "incident", `invoice: ${JSON.stringify(bad)}`);
    const incidentRun = bad.body.details.runId;

    step = "sign-in";
    await page.goto(base + "/");
    await page.waitForSelector("#token");
    await page.fill("#token", "slc_not_a_token");
    await page.click("button[type=submit]");
    await page.waitForSelector("#notice .error:has-text('not known')", { timeout: 5000 });
    await shot(page, "sign-in");
    await page.fill("#token", admin);
    await page.click("button[type=submit]");

    step = "flows";
    await page.waitForSelector("table tbody tr");
    const flows = await page.locator("tbody tr td:first-child").allInnerTexts();
    check(JSON.stringify(flows.sort()) === JSON.stringify(["expenses", "greet", "heartbeat", "invoices", "orders"]), `flows listed: ${flows}`);
    const ordersRow = await page.locator("tbody tr", { hasText: "orders" }).innerText();
    check(/webhook \/hooks\/orders/.test(ordersRow), `the trigger is shown: ${ordersRow}`);
    check(/\b2\b/.test(ordersRow) && /\b1\b/.test(ordersRow), `runs and failures of the day: ${ordersRow}`);
    await shot(page, "flows");

    step = "flow page";
    await page.click("a[href='#/flows/orders']");
    await page.waitForSelector(".grid .op");
    const cards = await page.locator(".grid [role=listitem]").evaluateAll((els) => els.map((e) => e.getAttribute("aria-label")));
    check(cards.some((c) => /step validate \(condition\).*on failure empty_order/.test(c)), `the failure path is drawn: ${cards}`);
    check(cards.some((c) => /step summary \(transform\)/.test(c)), `every step is on the grid: ${cards}`);
    check((await page.locator(".grid svg path[stroke-dasharray='6 4']").count()) === 1, "one failure edge");
    check((await text(page, "pre.source")).includes("id: orders"), "the file's text");
    await shot(page, "flow");

    step = "runs list";
    await open(page, "#/runs?status=failed");
    await page.waitForSelector("tbody tr");
    const failedRows = await page.locator("tbody tr").allInnerTexts();
    check(failedRows.length === 1 && failedRows[0].includes(failedRun), `only the failed run: ${failedRows}`);
    // Search by a field.
    await open(page, "#/runs");
    await page.waitForSelector("tbody tr");
    await page.fill("#f-field", "trigger.body.orderId");
    await page.fill("#f-value", "A1");
    await page.click("form.filters button[type=submit]");
    await page.waitForFunction(() => location.hash.includes("field="));
    await page.waitForSelector("text=runs read by the last search");
    const found = await page.locator("tbody tr").allInnerTexts();
    check(found.length === 1 && found[0].includes("orders") && found[0].includes("succeeded"), `field search: ${found}`);
    // A jq predicate that does not compile: a clear error.
    await open(page, "#/runs?search=" + encodeURIComponent(".output.total >"));
    check((await text(page, "[role=alert]")).includes("does not compile"), "a bad search says why");
    // One that runs too long: stopped, said, and the server answers on.
    await open(page, "#/runs?search=" + encodeURIComponent("last(range(1e12)) > 0"));
    check((await text(page, "[role=alert]")).includes("ran longer than its limit"), "a search that runs too long says so");
    check((await fetch(`${base}/api/health`)).status === 200, "the server answers on");
    await open(page, "#/runs?search=" + encodeURIComponent(".output.total == 7"));
    await page.waitForSelector("text=runs read by the last search");
    check((await page.locator("tbody tr").count()) === 1, "the jq search finds the run");
    // Live: a run started elsewhere appears without a reload.
    await open(page, "#/runs");
    await page.waitForSelector("tbody tr");
    const before = await page.locator("tbody tr").count();
    await post("/hooks/orders", { orderId: "LIVE-1", items: [{ qty: 1, price: 1 }] });
    await page.waitForFunction((n) => document.querySelectorAll("tbody tr").length > n, before, { timeout: 10000 });
    await shot(page, "runs");

    step = "waiting run";
    const expense = await post("/hooks/expenses", { expense: "E-1", amount: 120 });
    check(expense.status === 202, `expense: ${JSON.stringify(expense)}`);
    await open(page, `#/runs/${expense.body.runId}`);
    const waits = await text(page, "[aria-label='What the run waits for']");
    check(waits.includes("at step approval") && waits.includes("an event of type expense.approved") && waits.includes("E-1"), `what it waits for: ${waits}`);
    await shot(page, "run-waiting");
    const approved = await post("/events", { specversion: "1.0", id: "a-1", source: "/approvals", type: "expense.approved", expenseid: "E-1", data: { by: "ada" } });
    check(approved.status === 202, `approval: ${JSON.stringify(approved)}`);
    // The page follows the run: it ends without a reload.
    await page.waitForSelector("h1 .badge.s-succeeded", { timeout: 10000 });
    check((await text(page, "main")).includes("expense E-1 approved by ada"), "the approved run's log");

    step = "cancel";
    const second = await post("/hooks/expenses", { expense: "E-2", amount: 9 });
    await open(page, `#/runs/${second.body.runId}`);
    await page.waitForSelector("[aria-label='What the run waits for']");
    page.once("dialog", (d) => d.accept());
    await page.click("text=Cancel run");
    await page.waitForSelector("h1 .badge.s-cancelled", { timeout: 10000 });

    step = "failed run";
    await open(page, `#/runs/${failedRun}`);
    const why = await text(page, "[aria-label='Why the run stopped']");
    check(why.includes("order A2 has no items") && why.includes("empty_order"), `the failing step's error: ${why}`);
    const detail = await text(page, "section[aria-label=Step]");
    check(detail.includes("Step empty_order") && detail.includes("order A2 has no items"), `the failing step is open: ${detail}`);
    await shot(page, "run-failed");

    step = "incident";
    await open(page, `#/runs/${incidentRun}`);
    await page.waitForSelector("#patch");
    await page.fill("#patch", '{"amount": }');
    check((await text(page, "#patch-error")).includes("not JSON at line 1"), "a patch that is not JSON: its position");
    check(await page.locator("form.panel button[type=submit]").isDisabled(), "nothing is sent");
    await page.fill("#patch", '{"amount": 10}');
    const preview = await text(page, "ul.diff");
    check(preview.includes('.amount: "ten" → 10'), `the patch's effect is shown: ${preview}`);
    await shot(page, "run-incident");
    await page.click("form.panel button[type=submit]");
    await page.waitForSelector(".badge.s-succeeded", { timeout: 10000 });
    const resumed = await (await fetch(`${base}/api/runs/${incidentRun}`, { headers: { authorization: `Bearer ${admin}` } })).json();
    check(resumed.status === "succeeded" && resumed.output.gross === 12, `resumed: ${JSON.stringify(resumed.output)}`);
    await shot(page, "run-inspector");

    step = "notification";
    // The resumed run's `notify` step told the operators (admins see it too), live.
    await page.waitForSelector("#inbox-count:has-text('1')", { timeout: 10000 });
    await page.click("#inbox-link");
    await page.waitForSelector(".note.unread");
    const note = await text(page, ".note.unread");
    check(note.includes("Invoice I-7 recorded") && note.includes("12 with tax"), `the notification: ${note}`);
    await shot(page, "inbox");
    await page.click(".note.unread button");
    await page.waitForSelector(".note.read");
    await page.waitForFunction(() => document.getElementById("inbox-count").textContent === "");
    const viewerNotes = await (await fetch(`${base}/api/notifications`, { headers: { authorization: `Bearer ${process.env.SLUICE_VIEWER_TOKEN}` } })).json();
    check(viewerNotes.notifications.length === 0, "a viewer does not see the operators' notifications");

    step = "manual run";
    await open(page, "#/flows/greet");
    await page.waitForSelector("#field-name");
    // A required field left empty: said at the field, nothing sent.
    await page.click("form[aria-label='Start greet'] button[type=submit]");
    check((await text(page, "#field-name-problem")).includes("is required"), "the required field is named");
    check((await page.locator("dialog[open]").count()) === 0, "nothing asked, nothing sent");
    await page.fill("#field-name", "Ada");
    await page.fill("#field-times", "2");
    await page.check("#field-loud");
    await shot(page, "manual-form");
    await page.click("form[aria-label='Start greet'] button[type=submit]");
    await page.waitForSelector("dialog[open]");
    check((await text(page, "dialog[open]")).includes("Send this greeting?"), "the flow's confirmation");
    await shot(page, "manual-confirm");
    await page.click("dialog[open] button[value=yes]");
    await page.waitForFunction(() => /#\/runs\/[0-9a-f-]+$/.test(location.hash));
    await page.waitForSelector(".badge.s-succeeded", { timeout: 10000 });
    check((await text(page, "main")).includes("Hello Ada!!! Hello Ada!!!"), "the manual run's output");
    // The server checks the fields too.
    const wrong = await post("/api/flows/greet/runs", { name: 7, extra: 1 }, admin);
    check(wrong.status === 400 && wrong.body.details.fields.length === 2, `fields checked by the server: ${JSON.stringify(wrong)}`);

    step = "retry";
    await open(page, `#/runs/${failedRun}`);
    await page.click("text=Retry with the flow as it ran");
    await page.waitForFunction((id) => /#\/runs\//.test(location.hash) && !location.hash.endsWith(id), failedRun);
    await page.waitForSelector(".badge.s-failed", { timeout: 10000 });

    step = "editor";
    await open(page, "#/flows/orders");
    await page.click("text=Edit the flow file");
    await page.waitForSelector("#editor");
    await page.waitForSelector("#problems-title:has-text('No problems')");
    const original = await page.inputValue("#editor");
    const mistake = original.replace("type: condition", "type: conditon");
    const badLine = mistake.split("\n").findIndex((l) => l.includes("conditon")) + 1;
    await page.fill("#editor", mistake);
    await page.waitForSelector(`#problems li:has-text('line ${badLine}, column')`, { timeout: 5000 });
    check((await text(page, "#problems")).includes("conditon"), "the diagnostic names the mistake");
    check((await page.locator(".gutter .bad").innerText()) === String(badLine), "the line is marked");
    await shot(page, "editor");
    await page.click("form.edit button[type=submit]");
    await page.waitForSelector("#problems-title:has-text('Not saved')");
    const served = await (await fetch(`${base}/api/flows/orders`, { headers: { authorization: `Bearer ${admin}` } })).json();
    check(served.source === original, "a flow with problems is not saved");
    // A good change, then the token is revoked before it is saved: back to
    // sign-in, and the change is still there after signing in again.
    await page.fill("#editor", original.replace("Sums an order's lines", "Sums the lines of an order"));
    await page.waitForSelector("#problems-title:has-text('No problems')");

    step = "an expired or revoked token";
    execSync(process.env.SLUICE_REVOKE);
    await page.click("form.edit button[type=submit]");
    await page.waitForSelector("#token");
    await page.waitForSelector("#notice .error:has-text('revoked')", { timeout: 5000 });
    await page.fill("#token", process.env.SLUICE_ADMIN2_TOKEN);
    await page.click("button[type=submit]");
    await page.waitForSelector("text=Your unsaved changes are back.");
    check((await page.inputValue("#editor")).includes("Sums the lines of an order"), "nothing lost in the editor");
    await page.click("form.edit button[type=submit]");
    await page.waitForFunction(() => location.hash === "#/flows/orders");
    await page.waitForSelector("dd:has-text('Sums the lines of an order')");
    check(require("node:fs").readFileSync(process.env.SLUICE_FLOWS + "/orders.yaml", "utf8").includes("Sums the lines of an order"), "the file is written");

    step = "new flow";
    const stale = await fetch(`${base}/api/flows/orders?version=0000`, { method: "PUT", headers: { authorization: `Bearer ${process.env.SLUICE_ADMIN2_TOKEN}` }, body: original });
    check(stale.status === 409, `a save over a version changed since is refused: ${stale.status}`);
    await open(page, "#/flows");
    await page.click("text=New flow");
    await page.waitForSelector("#editor");
    const newFlow = "id: orders\ntrigger: {type: manual}\nsteps:\n  - {key: a, type: log, options: {message: hi}}\n";
    await page.fill("#editor", newFlow);
    await page.click("form.edit button[type=submit]");
    await page.waitForSelector("#problems-title:has-text('served already')");
    await page.fill("#editor", newFlow.replace("id: orders", "id: hello-new"));
    await page.click("form.edit button[type=submit]");
    await page.waitForFunction(() => location.hash === "#/flows/hello-new");
    check(require("node:fs").existsSync(process.env.SLUICE_FLOWS + "/hello-new.yaml"), "the new flow's file");
    check(require("node:fs").readFileSync(process.env.SLUICE_FLOWS + "/orders.yaml", "utf8").includes("Sums the lines of an order"), "the other flow's file is untouched");

    step = "viewer";
    await page.click("text=Sign out");
    await page.waitForSelector("#token");
    await page.fill("#token", process.env.SLUICE_VIEWER_TOKEN);
    await page.click("button[type=submit]");
    await page.waitForFunction(() => location.hash !== "#/signin" && document.body.dataset.shown === location.hash);
    await open(page, "#/flows");
    await page.waitForSelector("table tbody tr");
    check((await page.locator("text=New flow").count()) === 0, "a viewer is not offered a new flow");
    await open(page, `#/runs/${failedRun}`);
    await page.waitForSelector(".badge.s-failed");
    check((await page.locator("text=Retry with").count()) === 0, "a viewer is not offered a retry");
    await open(page, "#/flows/greet");
    await page.waitForSelector(".grid");
    check((await page.locator("#field-name").count()) === 0, "a viewer is not offered a manual run");
    check((await page.locator("text=Edit the flow file").count()) === 0, "a viewer is not offered the editor");
    const refused = await fetch(`${base}/api/flows/greet`, { method: "PUT", headers: { authorization: `Bearer ${process.env.SLUICE_VIEWER_TOKEN}` }, body: "id: greet" });
    check(refused.status === 403, `a viewer cannot save: ${refused.status}`);

    step = "a phone's width";
    await page.setViewportSize({ width: 390, height: 800 });
    await open(page, `#/runs/${incidentRun}`);
    await page.waitForSelector(".timeline");
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 1, `nothing wider than the phone: ${overflow}px`);
    await shot(page, "phone-run");

    step = "keyboard";
    await page.setViewportSize({ width: 1280, height: 860 });
    await open(page, "#/flows");
    await page.waitForSelector("tbody tr");
    // A page's content has the focus; the first tab stop is its first link.
    check(await page.evaluate(() => document.activeElement.id === "main"), "the content has the focus");
    await page.keyboard.press("Tab");
    check((await page.evaluate(() => document.activeElement.textContent)) === "expenses", "the first link of the list");
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => location.hash === "#/flows/expenses");
    await page.waitForSelector(".grid");

    check(errors.length === 0, `no script errors: ${errors.join("; ")}`);
    console.log("ui: every page and action worked");
  } catch (e) {
    console.error(e.stack || String(e));
    if (shots) await page.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }).catch(() => {});
    await browser.close();
    process.exit(1);
  }
  await browser.close();
})();
