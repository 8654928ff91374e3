// ComfyUI's own web frontend against `veetance serve --frontend`, in Debian's Chromium, driven by
// Playwright (playwright-core, no bundled browser). tests/python/test_web_editor.py starts the
// server and runs this script twice:
//
//   node web_editor.mjs BASE_URL SHOT_DIR first   load the page, the klein template from the
//                                                 template browser, Run, progress, previews, the
//                                                 image in the canvas and the queue panel, save
//                                                 the workflow, reload, change a setting
//   node web_editor.mjs BASE_URL SHOT_DIR restarted   (after a server restart, in a new browser
//                                                 profile) the setting and the workflow are back
//   VEETANCE_TOKEN=… node web_editor.mjs BASE_URL SHOT_DIR token   a server with --token: the
//                                                 browser signs in at /?token= and the whole
//                                                 page (API, WebSocket) works with the cookie
//
// Every step checks what the user would see (text, images, the graph) and takes a screenshot in
// SHOT_DIR. Any failed request to our server (status >= 400, or no answer) and any console error
// not caused by the closed network of the test machine fails the run. The last line printed is a
// JSON summary; the exit code is 0 only when every check passed.

import { chromium } from 'playwright-core';

const [base, shotDir, phase] = process.argv.slice(2);
if (!base || !shotDir || !['first', 'restarted', 'token'].includes(phase)) {
  console.error('usage: node web_editor.mjs BASE_URL SHOT_DIR first|restarted|token');
  process.exit(2);
}

const TEMPLATE_TITLE = 'FLUX.2 [Klein] 4B: Text to Image';
const WORKFLOW_NAME = 'veetance-browser-test';
const SETTING_ID = 'Comfy.EnableTooltips';
const SETTING_LABEL = 'Enable Tooltips';
const RUN_TIMEOUT_MS = 15 * 60 * 1000;

const summary = { phase, steps: [], failedRequests: [], consoleErrors: [] };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // The machine's network is closed: without these, Chromium's own background connections
  // are refused many at a time.
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
const page = await context.newPage();
const origin = new URL(base).origin;

// ---- what counts as a failure of our server ---------------------------------------------------
const answered = new Set();
page.on('response', (response) => {
  const url = response.url();
  if (!url.startsWith(origin)) return;
  answered.add(response.request());
  if (response.status() >= 400) {
    summary.failedRequests.push(`${response.status()} ${response.request().method()} ${url.slice(origin.length)}`);
  }
});
page.on('requestfailed', (request) => {
  const url = request.url();
  // A request the page itself abandoned after our answer (a fetch it stopped reading) is not a
  // failure; one our server never answered is.
  if (!url.startsWith(origin) || answered.has(request)) return;
  if (request.failure()?.errorText === 'net::ERR_ABORTED') return;
  summary.failedRequests.push(`no answer: ${request.method()} ${url.slice(origin.length)} (${request.failure()?.errorText})`);
});
page.on('console', (message) => {
  if (message.type() !== 'error') return;
  const where = message.location()?.url || '';
  const text = message.text();
  // The frontend asks api.comfy.org for release notes; this machine cannot resolve it. That
  // error is the test machine's closed network, not our server.
  if (text.includes('ERR_NAME_NOT_RESOLVED') || (where && !where.startsWith(origin))) return;
  summary.consoleErrors.push(text.slice(0, 400));
});
page.on('pageerror', (error) => summary.consoleErrors.push(`page error: ${error.message.slice(0, 400)}`));

// ---- WebSocket traffic, as the page sees it ---------------------------------------------------
const ws = { status: 0, progress: 0, previews: 0, executed: [], success: 0, errors: [] };
page.on('websocket', (socket) => {
  socket.on('framereceived', ({ payload }) => {
    if (typeof payload !== 'string') { ws.previews += 1; return; }
    let msg;
    try { msg = JSON.parse(payload); } catch { return; }
    if (msg.type === 'status') ws.status += 1;
    if (msg.type === 'progress') ws.progress += 1;
    if (msg.type === 'executed') ws.executed.push(msg.data);
    if (msg.type === 'execution_success') ws.success += 1;
    if (msg.type === 'execution_error') ws.errors.push(msg.data);
  });
});

let shotNumber = 0;
async function step(name, fn) {
  const started = Date.now();
  try {
    const detail = await fn();
    shotNumber += 1;
    const shot = `${shotDir}/${phase}-${String(shotNumber).padStart(2, '0')}-${name}.png`;
    await page.screenshot({ path: shot });
    summary.steps.push({ name, ok: true, ms: Date.now() - started, shot, detail });
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    const shot = `${shotDir}/${phase}-failed-${name}.png`;
    await page.screenshot({ path: shot }).catch(() => {});
    summary.steps.push({ name, ok: false, ms: Date.now() - started, shot, error: String(error?.stack || error) });
    console.log(`FAIL ${name}: ${error?.stack || error}`);
    throw error;
  }
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function loadPage() {
  await page.goto(`${base}/`, { waitUntil: 'networkidle', timeout: 120_000 });
  await page.waitForFunction(() => window.app?.graph && document.querySelector('canvas'), null, { timeout: 60_000 });
  // The frontend settles (settings, jobs, templates index) after its first paint.
  await page.waitForTimeout(1500);
}

const setting = (id) => page.evaluate((id) => window.app.extensionManager.setting.get(id), id);
const graphTypes = () => page.evaluate(() => window.app.graph.nodes.map((n) => n.type));

/** The switch of SETTING_LABEL in the settings dialog, once the search shows that one alone. */
async function settingSwitch() {
  const switches = page.locator('[role="dialog"] [role="switch"]');
  await page.waitForFunction(() => document.querySelectorAll('[role="dialog"] [role="switch"]').length === 1,
    null, { timeout: 10_000 });
  await page.waitForTimeout(300);
  return switches.first();
}

async function openWorkflowsSidebar() {
  await page.getByTestId('workflows-tab-button').click();
  await page.getByText(WORKFLOW_NAME, { exact: false }).first().waitFor({ timeout: 20_000 });
}

try {
  if (phase === 'first') {
    // Draw nodes in full at any zoom (no low-detail boxes), so the screenshots show the graph.
    // A display preference only, set as the settings dialog would.
    const lod = await fetch(`${base}/api/settings/LiteGraph.Canvas.MinFontSizeForLOD`, { method: 'POST', body: '0' });
    check(lod.ok, `POST /api/settings answered ${lod.status}`);
    await step('page-loads', async () => {
      await loadPage();
      const stats = await page.evaluate(async () => (await fetch('api/system_stats')).json());
      check(stats.system?.comfyui_version, 'system_stats has no version');
      return { nodeClasses: await page.evaluate(() => Object.keys(window.LiteGraph.registered_node_types).length) };
    });

    await page.evaluate(() => {
      window.__veetancePreviews = 0;
      for (const kind of ['b_preview', 'b_preview_with_metadata']) {
        window.app.api.addEventListener(kind, () => { window.__veetancePreviews += 1; });
      }
    });

    await step('template-browser', async () => {
      // A new user meets the template browser at the first start; otherwise open it.
      const search = page.getByPlaceholder('Search').first();
      if (!(await search.isVisible().catch(() => false))) {
        await page.getByRole('button', { name: 'Templates' }).click();
      }
      await search.fill('klein');
      await page.getByText(TEMPLATE_TITLE).first().waitFor({ timeout: 20_000 });
    });

    await step('template-loaded', async () => {
      await page.getByText(TEMPLATE_TITLE).first().click();
      await page.waitForFunction(() => window.app.graph.nodes.length > 0 &&
        window.app.graph.nodes.some((n) => n.type === 'SaveImage'), null, { timeout: 30_000 });
      await page.waitForTimeout(1000);
      const types = await graphTypes();
      // Missing node classes would come up as a dialog and as nodes without a registered type.
      const missing = await page.evaluate(() => window.app.graph.nodes
        .filter((n) => n.has_errors || !(n.type in window.LiteGraph.registered_node_types) && !n.isSubgraphNode?.())
        .map((n) => n.type));
      check(missing.length === 0, `nodes the server did not describe: ${missing}`);
      return { types };
    });

    await step('progress', async () => {
      await page.getByTestId('queue-button').click();
      // The expanded queue panel names the node running and its progress, from our progress
      // events, with the latest preview as the job's thumbnail.
      await page.getByTestId('queue-overlay-toggle').click();
      await page.getByText(/SamplerCustomAdvanced\s*:\s*[1-9]\d*%/).first().waitFor({ timeout: RUN_TIMEOUT_MS });
      check(ws.progress > 0, 'no progress event reached the page');
      return { progressEvents: ws.progress };
    });

    await step('preview', async () => {
      // Latent previews: binary frames the frontend decodes into preview images while sampling.
      await page.waitForFunction(() => window.__veetancePreviews > 0, null, { timeout: RUN_TIMEOUT_MS });
      const preview = page.locator('img[src^="blob:"]').first();
      await preview.waitFor({ timeout: RUN_TIMEOUT_MS });
      await page.waitForFunction((el) => el.complete && el.naturalWidth > 0, await preview.elementHandle(), { timeout: 10_000 });
      // The frontend hands the preview to the sampling (subgraph) node on the canvas as its
      // image. (The canvas does not paint it on this template's subgraph node; the queue
      // panel's thumbnail, left open for the screenshot, is where a user sees it.)
      const onCanvas = await page.waitForFunction(() => window.app.graph.nodes
        .filter((n) => n.imgs?.some((i) => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0))
        .map((n) => n.type), null, { timeout: RUN_TIMEOUT_MS }).then((h) => h.jsonValue()).catch(() => []);
      check(onCanvas.length > 0, 'no node on the canvas holds a preview image');
      return { previewFrames: ws.previews, previewEvents: await page.evaluate(() => window.__veetancePreviews), nodesWithPreview: onCanvas };
    });

    await step('image-in-canvas', async () => {
      await page.waitForFunction(() => {
        const node = window.app.graph.nodes.find((n) => n.type === 'SaveImage' && n.mode === 0);
        return node?.imgs?.length > 0 && node.imgs[0].complete && node.imgs[0].naturalWidth > 0;
      }, null, { timeout: RUN_TIMEOUT_MS });
      check(ws.errors.length === 0, `execution_error: ${JSON.stringify(ws.errors)}`);
      check(ws.success === 1, 'no execution_success');
      const image = await page.evaluate(() => {
        const node = window.app.graph.nodes.find((n) => n.type === 'SaveImage' && n.mode === 0);
        return { src: node.imgs[0].src, width: node.imgs[0].naturalWidth, height: node.imgs[0].naturalHeight };
      });
      check(image.src.includes('/api/view') && image.src.includes('Flux2-Klein'), `unexpected image ${image.src}`);
      check(image.width === 1024 && image.height === 1024, `image is ${image.width}x${image.height}`);
      await page.getByTestId('queue-overlay-toggle').click();
      await page.waitForTimeout(500);
      return image;
    });

    await step('queue-panel', async () => {
      await page.getByTestId('queue-overlay-toggle').click();
      // The finished job in the queue panel's job list, its output as the thumbnail (from
      // /api/jobs' preview_output). Left open for the screenshot.
      const thumb = page.getByTestId('queue-progress-overlay').getByTestId('job-assets-list')
        .locator('img[src*="Flux2-Klein"]').first();
      await thumb.waitFor({ timeout: 30_000 });
      await page.waitForFunction((el) => el.complete && el.naturalWidth > 0, await thumb.elementHandle(), { timeout: 10_000 });
      return { thumbnail: await thumb.getAttribute('src') };
    });

    await step('output-gallery', async () => {
      await page.getByTestId('queue-overlay-toggle').click();
      // The Media Assets panel's "Generated" tab: the outputs of finished jobs.
      await page.getByTestId('assets-tab-button').click();
      const output = page.locator('img[src*="/api/view"][src*="Flux2-Klein"]').first();
      await output.waitFor({ timeout: 30_000 });
      await page.waitForFunction((el) => el.complete && el.naturalWidth > 0, await output.elementHandle(), { timeout: 10_000 });
      await page.getByText('Flux2-Klein_00001').first().waitFor({ timeout: 10_000 });
      return { output: await output.getAttribute('src') };
    });

    await step('workflow-saved', async () => {
      await page.getByTestId('assets-tab-button').click();
      // Focus the canvas (an empty spot), then the save shortcut.
      await page.mouse.click(400, 800);
      const saved = page.waitForResponse((r) => r.request().method() === 'POST' &&
        decodeURIComponent(r.url()).includes(`workflows/${WORKFLOW_NAME}.json`), { timeout: 30_000 });
      await page.keyboard.press('Control+s');
      const name = page.locator('.p-dialog input[type="text"], [role="dialog"] input').first();
      await name.waitFor({ timeout: 10_000 });
      await name.fill(WORKFLOW_NAME);
      await name.press('Enter');
      const response = await saved;
      check(response.status() === 200, `saving answered ${response.status()}`);
      return { savedAs: await response.json() };
    });

    await step('workflow-after-reload', async () => {
      const before = (await graphTypes()).sort();
      await loadPage();
      await openWorkflowsSidebar();
      await page.getByText(WORKFLOW_NAME, { exact: false }).first().click();
      await page.waitForFunction(() => window.app.graph.nodes.some((n) => n.type === 'SaveImage'), null, { timeout: 20_000 });
      const after = (await graphTypes()).sort();
      check(JSON.stringify(after) === JSON.stringify(before), `reopened graph differs: ${after} vs ${before}`);
      return { nodes: after.length };
    });

    await step('setting-changed', async () => {
      check((await setting(SETTING_ID)) === true, `${SETTING_ID} should start true`);
      await page.getByRole('button', { name: 'Settings (Ctrl + ,)' }).first().click();
      const search = page.getByPlaceholder(/Search/).last();
      await search.waitFor({ timeout: 10_000 });
      await search.fill(SETTING_LABEL);
      const toggle = await settingSwitch();
      const posted = page.waitForResponse((r) => r.request().method() === 'POST' &&
        r.url().includes(`/settings/${SETTING_ID}`), { timeout: 20_000 });
      await toggle.click();
      const response = await posted;
      check(response.status() === 200, `saving the setting answered ${response.status()}`);
      check((await setting(SETTING_ID)) === false, 'the setting did not change');
      await page.waitForFunction((el) => el.getAttribute('aria-checked') === 'false', await toggle.elementHandle(), { timeout: 5000 });
      await page.waitForTimeout(500); // the switch's animation, for the screenshot
      return { [SETTING_ID]: false };
    });
  } else if (phase === 'token') {
    await step('token-sign-in', async () => {
      const token = process.env.VEETANCE_TOKEN;
      check(token, 'VEETANCE_TOKEN is not set');
      // Without signing in, the page itself is refused.
      const refused = await page.goto(`${base}/`);
      check(refused.status() === 401, `the page answered ${refused.status()} without the token`);
      await page.waitForTimeout(500);
      // That 401 (and the favicon's) was the point: only what follows counts.
      summary.failedRequests.length = 0;
      summary.consoleErrors.length = 0;
      await page.goto(`${base}/?token=${encodeURIComponent(token)}`, { waitUntil: 'networkidle', timeout: 120_000 });
      check(!page.url().includes('token='), `the token stays in the address bar: ${page.url()}`);
      await page.waitForFunction(() => window.app?.graph && document.querySelector('canvas'), null, { timeout: 60_000 });
      await page.waitForTimeout(1500);
      check(ws.status > 0, 'the WebSocket did not connect with the cookie');
      const classes = await page.evaluate(() => Object.keys(window.LiteGraph.registered_node_types).length);
      check(classes > 20, `only ${classes} node classes loaded`);
      return { nodeClasses: classes };
    });
  } else {
    await step('setting-survives-restart', async () => {
      await loadPage();
      const value = await setting(SETTING_ID);
      check(value === false, `${SETTING_ID} is ${value} after the restart`);
      // And the settings dialog shows it off.
      await page.getByRole('button', { name: 'Settings (Ctrl + ,)' }).first().click();
      await page.getByPlaceholder(/Search/).last().fill(SETTING_LABEL);
      const toggle = await settingSwitch();
      const shown = await toggle.getAttribute('aria-checked');
      check(shown === 'false', `the settings dialog shows ${SETTING_LABEL} as ${shown}`);
      return { [SETTING_ID]: value, switch: shown };
    });

    await step('workflow-survives-restart', async () => {
      await page.keyboard.press('Escape');
      await openWorkflowsSidebar();
      await page.getByText(WORKFLOW_NAME, { exact: false }).first().click();
      await page.waitForFunction(() => window.app.graph.nodes.some((n) => n.type === 'SaveImage'), null, { timeout: 20_000 });
      return { nodes: (await graphTypes()).length };
    });

    await step('node-library', async () => {
      // Our nodes in the node library, under ComfyUI's categories, with our node docs as the
      // description the preview shows.
      await page.getByTestId('node-library-tab-button').click();
      const search = page.getByPlaceholder(/Search/).first();
      await search.waitFor({ timeout: 10_000 });
      await search.fill('Load Diffusion Model');
      const entry = page.getByText('Load Diffusion Model', { exact: true }).first();
      await entry.waitFor({ timeout: 10_000 });
      await entry.hover();
      const doc = await page.evaluate(() => window.LiteGraph.registered_node_types.UNETLoader?.nodeData?.description ?? '');
      check(doc.includes('diffusion_models'), `UNETLoader's description is not our node doc: ${doc}`);
      const shown = page.getByText(doc.slice(0, 40), { exact: false }).first();
      await shown.waitFor({ timeout: 10_000 });
      const widget = await page.evaluate(() => window.LiteGraph.registered_node_types.UNETLoader.nodeData.input.required.unet_name);
      check(Array.isArray(widget[0]) && widget[0].includes('flux-2-klein-4b.safetensors'),
        `UNETLoader's unet_name combo does not list the models folder: ${JSON.stringify(widget)}`);
      return { category: await page.evaluate(() => window.LiteGraph.registered_node_types.UNETLoader.nodeData.category), unetNames: widget[0] };
    });
  }
} catch {
  // Recorded by step(); the summary says which.
}

await browser.close();
const ok = summary.steps.length > 0 && summary.steps.every((s) => s.ok) &&
  summary.failedRequests.length === 0 && summary.consoleErrors.length === 0;
summary.ok = ok;
console.log(JSON.stringify(summary));
process.exit(ok ? 0 : 1);
