// Headless-Chromium driver for tests/browser/test_browser.py: the ComfyUI frontend as a user sees it.
//
//   node tests/browser/drive.mjs < job.json > result.json
//
// job (JSON on stdin):
//   { "base": "http://127.0.0.1:PORT",        // the ComfyUI server (tests: fixture comfy_server)
//     "chromium": "/usr/bin/chromium",         // optional; else $CHROMIUM or /usr/bin/chromium
//     "action": "check" | "queue" | "shot" | "help" | "redo" | "runtemplates",
//     check: "module": "seedstory", "workflows": [names], "shots": DIR
//       -> per workflow: load it from the template browser as a user does (sidebar Templates button, the dialog's
//          Extensions > <module> category, a click on the workflow's card; see loadTemplate), list the nodes
//          (registered? widget values) and any dialogs (missing nodes), run the frontend's own app.graphToPrompt(),
//          screenshot DIR/workflow_<name>.png; also what the dialog listed (cards, thumbnails) and the
//          /api/workflow_templates/<module>/... requests the clicks made
//     queue: "module", "workflow", "node": SaveStory node id, "frames": N, "set": [[node, widget, value]...],
//            "shot": PNG, "timeout_ms"
//       -> loads the workflow from the template browser (as in check), sets the listed widgets, clicks the Run
//          (queue) button, waits until the node shows N loaded images, screenshots the canvas
//     shot: "url", "shot": PNG, "viewport": [w, h]   -> a plain page screenshot (the storybook)
//     help: "node": node type (e.g. SeedStoryGenerateStory), "expect": [texts], "shot": PNG
//       -> on an empty canvas adds that node, selects it with a mouse click on its title, clicks the selection
//          toolbox's Info button (frontend >= 1.3x: opens the right side panel's Info tab, which renders the node's
//          help page fetched from /extensions/<pack>/docs/<NodeId>.md), waits until the panel shows every "expect"
//          text, screenshots the page; returns the panel's text, the docs URLs fetched (with status) and the panel box
//     redo: "url": a storybook page, "frame": k, "shot": PNG, "timeout_ms"
//       -> opens the storybook, clicks frame k's "redo" button (nodes/assets/redo.js), waits until the page has
//          navigated to the new storybook (or shows the redo's error), screenshots it; returns both pages' images,
//          the POST /prompt response and the requests the page made
//     runtemplates: "module", "workflows": [names], "timeout_ms"
//       -> for each workflow: load it from the template browser (as in check), click Run, wait for the prompt
//          in /api/history; returns per workflow the HTTP status of POST /api/prompt and the run's status/error
//   }
// Prints one JSON object on stdout; errors -> {"error": "..."} and exit code 1.
// Only the server's own origin is reachable: every other request (api.comfy.org, fonts, ...) is aborted so runs
// are offline and deterministic. Before the page loads, /api/settings gets the values that keep first-run dialogs,
// the minimap and the "Nodes 2.0" banner away.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

export const CHROMIUM_FLAGS = [
  '--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
  '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
  '--disable-quic',
];

// Settings that a first start would otherwise ask about.
export const SETTINGS = {
  'Comfy.TutorialCompleted': true,            // no template browser popping up on first load
  'Comfy.Workflow.ShowMissingModelsWarning': false, // the official workflows name files the test server lacks
  'Comfy.Workflow.ShowMissingNodesWarning': true,   // kept on: a missing node must show up
  'Comfy.Minimap.Visible': false,
  'Comfy.Validation.Workflows': true,
  'Comfy.Release.Version': '99.0.0',           // no "what's new" popup
  'Comfy.Release.Status': 'skipped',
};

const VIEWPORT = { width: 1600, height: 1000 };

function readStdin() {
  return new Promise((resolve, reject) => {
    let data = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (c) => { data += c; });
    process.stdin.on('end', () => resolve(data));
    process.stdin.on('error', reject);
  });
}

async function presetSettings(base) {
  const r = await fetch(`${base}/api/settings`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(SETTINGS),
  });
  if (!r.ok) throw new Error(`POST /api/settings -> ${r.status}`);
}

async function openBrowser(job) {
  const executablePath = job.chromium || process.env.CHROMIUM || '/usr/bin/chromium';
  return chromium.launch({ executablePath, args: CHROMIUM_FLAGS, timeout: 60000 });
}

async function openComfy(browser, base, log) {
  const context = await browser.newContext({ viewport: VIEWPORT, deviceScaleFactor: 1 });
  const origin = new URL(base).origin;
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith(origin) || url.startsWith('data:') || url.startsWith('blob:')) return route.continue();
    log.blocked.push(url);
    return route.abort();
  });
  // The "Introducing Nodes 2.0" banner is dismissed through localStorage, not a setting.
  await context.addInitScript(() => { localStorage.setItem('vueNodesBannerDismissed', 'true'); });
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') log.console_errors.push(m.text().slice(0, 500)); });
  page.on('pageerror', (e) => log.page_errors.push(String(e && e.stack || e).slice(0, 1000)));
  await page.goto(`${base}/`, { waitUntil: 'domcontentloaded', timeout: 120000 });
  await page.waitForFunction(() => window.app && window.app.graph && window.LiteGraph && window.app.canvas,
    null, { timeout: 120000 });
  // the node definitions must be in (registered from /object_info)
  await page.waitForFunction(() => !!window.LiteGraph.registered_node_types.SeedStorySaveStory,
    null, { timeout: 60000 }).catch(() => {});
  await page.waitForTimeout(500);
  return page;
}

// The template browser, driven as a user drives it (frontend 1.47.12, ComfyUI 0.30.0's pin; selectors read from its
// bundle, components SidebarTemplatesButton and WorkflowTemplateSelectorDialog):
//   * the left sidebar's Templates button (class `templates-tab-button`) opens the dialog
//     (role=dialog, aria-labelledby="global-workflow-template-selector");
//   * its left <nav> has a collapsible "Extensions" group with one item (role=button, the module name as its label)
//     per custom-node module that GET /api/workflow_templates lists; clicking ours shows only our templates;
//   * each template is a card with data-testid="template-workflow-<name>" and a thumbnail fetched from
//     /api/workflow_templates/<module>/<name>.jpg; clicking a card fetches /api/workflow_templates/<module>/<name>.json,
//     closes the dialog and loads the graph (app.loadGraphData, a new workflow tab named <name>).
const TEMPLATE_DIALOG = '[role="dialog"][aria-labelledby="global-workflow-template-selector"]';
const CARD_PREFIX = 'template-workflow-';

function watchTemplateRequests(page, module) {
  const seen = [];  // every /api/workflow_templates/<module>/... response (the card thumbnails, the template JSON)
  page.on('response', (r) => {
    const u = new URL(r.url());
    if (u.pathname.startsWith(`/api/workflow_templates/${module}/`)) {
      seen.push({ path: decodeURIComponent(u.pathname), status: r.status(),
        content_type: r.headers()['content-type'] || '' });
    }
  });
  return seen;
}

// Opens the Templates dialog and our module's category; returns what the dialog lists there.
async function openTemplateBrowser(page, module) {
  const button = page.locator('.templates-tab-button').first();
  await button.waitFor({ state: 'visible', timeout: 30000 });
  await button.click();
  const dialog = page.locator(TEMPLATE_DIALOG);
  await dialog.waitFor({ state: 'visible', timeout: 30000 });
  const nav = dialog.locator('nav');
  // the "Extensions" group: one item per custom-node module (open by default; a click on its heading toggles it)
  const heading = nav.locator('h3', { hasText: /^\s*Extensions\s*$/i });
  await heading.waitFor({ state: 'visible', timeout: 30000 });
  const item = nav.getByRole('button', { name: module, exact: true });
  if (!(await item.isVisible())) await heading.click();
  await item.waitFor({ state: 'visible', timeout: 10000 });
  const extensions = await heading.evaluate((h) => {
    const group = h.parentElement.parentElement;
    return [...group.querySelectorAll('[role="button"]')].map((b) => b.innerText.trim());
  });
  await item.click();
  // the grid then holds our cards only; wait until their thumbnails are decoded (or 15 s, then report as found)
  const cards = dialog.locator(`[data-testid^="${CARD_PREFIX}"]`);
  await cards.first().waitFor({ state: 'visible', timeout: 30000 });
  // (every card must hold its own decoded image: a card may render its text before its lazy <img> appears, so
  // "all images present are decoded" alone passes too early)
  await page.waitForFunction((sel) => {
    const els = [...document.querySelectorAll(sel)];
    return els.length > 0 && els.every((el) => {
      const imgs = [...el.querySelectorAll('img')];
      return imgs.length > 0 && imgs.every((im) => im.complete && im.naturalWidth > 0);
    });
  }, `${TEMPLATE_DIALOG} [data-testid^="${CARD_PREFIX}"]`, { timeout: 15000, polling: 200 }).catch(() => {});
  const listed = await cards.evaluateAll((els, prefix) => els.map((el) => ({
    name: el.getAttribute('data-testid').slice(prefix.length),
    text: (el.innerText || '').slice(0, 300),
    thumbnails: [...el.querySelectorAll('img')].map((im) => [im.complete, im.naturalWidth, im.naturalHeight]),
  })), CARD_PREFIX);
  return { dialog, extensions, listed };
}

// Loads one of our templates by clicking its card in the template browser; describes what happened.
async function loadTemplate(page, module, name, seen) {
  const before = seen.length;
  const { dialog, extensions, listed } = await openTemplateBrowser(page, module);
  const card = dialog.locator(`[data-testid="${CARD_PREFIX}${name}"]`);
  if (!(await card.count())) {
    await page.keyboard.press('Escape');
    return { via: 'template-browser', http_status: null, extensions, listed,
      error: `no card ${CARD_PREFIX}${name} under Extensions > ${module}` };
  }
  const wantPath = `/api/workflow_templates/${module}/${name}.json`;
  const fetched = page.waitForResponse((r) => decodeURIComponent(new URL(r.url()).pathname) === wantPath,
    { timeout: 30000 });
  await card.click();
  const res = await fetched;
  const template = await res.json();  // what the click fetched; the canvas must end up holding its nodes
  await dialog.waitFor({ state: 'hidden', timeout: 30000 });  // the dialog closes before the graph loads
  await page.waitForFunction(({ n, count }) => {
    const wf = window.app.extensionManager?.workflow?.activeWorkflow;
    return wf && wf.filename === n && window.app.graph._nodes.length === count;
  }, { n: name, count: (template.nodes || []).length }, { timeout: 30000, polling: 100 });
  const active = await page.evaluate(() => window.app.extensionManager.workflow.activeWorkflow.filename);
  return { via: 'template-browser', http_status: res.status(), template_url: wantPath, active_workflow: active,
    extensions, listed, requests: seen.slice(before) };
}

async function fitView(page) {
  await page.evaluate(async () => {
    try {
      window.app.canvas.deselectAll?.();
      await window.app.extensionManager.command.execute('Comfy.Canvas.FitView');
    } catch (e) { /* older frontends: leave the view as stored */ }
    window.app.canvas.setDirty(true, true);
  });
  await page.waitForTimeout(600);
}

async function describeGraph(page) {
  return page.evaluate(() => {
    const LG = window.LiteGraph;
    const nodes = window.app.graph._nodes.map((n) => ({
      id: n.id,
      type: n.type,
      registered: !!LG.registered_node_types[n.type],
      has_errors: !!n.has_errors,
      mode: n.mode,
      widgets: (n.widgets || []).map((w) => ({ name: w.name, value: w.value, type: w.type,
        serialize: w.serialize !== false && w.options?.serialize !== false })),
      // what the frontend itself would save for this node
      widgets_values: n.serialize().widgets_values ?? null,
    }));
    // dialogs open on the page (the missing-nodes warning is one)
    // (PrimeVue .p-dialog in older frontends; frontend 1.47's reka dialogs are [role=dialog])
    const dialogs = [...document.querySelectorAll('.p-dialog, [role="dialog"]')]
      .filter((d) => d.offsetParent !== null || getComputedStyle(d).display !== 'none')
      .map((d) => (d.innerText || '').slice(0, 400));
    return { nodes, dialogs };
  });
}

async function actionCheck(job, log) {
  await presetSettings(job.base);
  const browser = await openBrowser(job);
  const results = {};
  try {
    const page = await openComfy(browser, job.base, log);
    const seen = watchTemplateRequests(page, job.module);
    fs.mkdirSync(job.shots, { recursive: true });
    for (const name of job.workflows) {
      const t0 = Date.now();
      const load = await loadTemplate(page, job.module, name, seen);
      if (load.http_status !== 200) { results[name] = load; continue; }
      await fitView(page);
      const graph = await describeGraph(page);
      const prompt = await page.evaluate(async () => {
        const p = await window.app.graphToPrompt();
        return { output: p.output, workflow_nodes: p.workflow.nodes.length };
      });
      const shot = path.join(job.shots, `workflow_${name}.png`);
      await page.screenshot({ path: shot });
      results[name] = { ...load, ...graph, prompt: prompt.output, screenshot: shot, ms: Date.now() - t0 };
    }
  } finally {
    await browser.close();
  }
  return { workflows: results };
}

async function actionQueue(job, log) {
  await presetSettings(job.base);
  const browser = await openBrowser(job);
  try {
    const page = await openComfy(browser, job.base, log);
    const seen = watchTemplateRequests(page, job.module);
    const load = await loadTemplate(page, job.module, job.workflow, seen);
    if (load.http_status !== 200) return load;
    await page.evaluate((sets) => {
      for (const [id, name, value] of sets) {
        const node = window.app.graph.getNodeById(id);
        const w = node.widgets.find((x) => x.name === name);
        w.value = value;
        w.callback?.(value);
      }
    }, job.set || []);
    await fitView(page);
    const graph = await describeGraph(page);
    // The queue button of the (new) menu bar, as a user clicks it.
    // (frontend 1.32: a split button whose main part is labelled "Run"; older menus said "Queue")
    const button = page.getByRole('button', { name: 'Run', exact: true })
      .or(page.getByRole('button', { name: 'Queue Prompt', exact: true })).first();
    await button.waitFor({ state: 'visible', timeout: 30000 });
    const t0 = Date.now();
    const posted = page.waitForResponse((r) => r.url().endsWith('/api/prompt') && r.request().method() === 'POST',
      { timeout: 30000 });
    await button.click();
    const promptResponse = await (await posted).json();
    const timeout = job.timeout_ms || 180000;
    await page.waitForFunction(({ id, frames }) => {
      const node = window.app.graph.getNodeById(id);
      const imgs = node && node.imgs;
      return !!imgs && imgs.length === frames && imgs.every((im) => im.complete && im.naturalWidth > 0);
    }, { id: job.node, frames: job.frames }, { timeout, polling: 250 });
    const ms = Date.now() - t0;
    await page.waitForTimeout(500);
    await fitView(page);
    const shown = await page.evaluate((id) => {
      const node = window.app.graph.getNodeById(id);
      const outputs = window.app.nodeOutputs?.[String(id)] || null;
      return { srcs: node.imgs.map((im) => im.src), sizes: node.imgs.map((im) => [im.naturalWidth, im.naturalHeight]), outputs };
    }, job.node);
    fs.mkdirSync(path.dirname(job.shot), { recursive: true });
    await page.screenshot({ path: job.shot });
    return { ...graph, ...shown, load, prompt_response: promptResponse, run_ms: ms, screenshot: job.shot };
  } finally {
    await browser.close();
  }
}

async function actionShot(job) {
  const browser = await openBrowser(job);
  try {
    const [width, height] = job.viewport || [1100, 900];
    const page = await browser.newPage({ viewport: { width, height } });
    await page.goto(job.url, { waitUntil: 'load', timeout: 60000 });
    const imgs = await page.evaluate(() => [...document.images].map((im) => [im.complete, im.naturalWidth]));
    fs.mkdirSync(path.dirname(job.shot), { recursive: true });
    await page.screenshot({ path: job.shot, fullPage: !!job.full_page });
    const title = await page.title();
    return { title, images: imgs, screenshot: job.shot };
  } finally {
    await browser.close();
  }
}

async function actionHelp(job, log) {
  await presetSettings(job.base);
  const browser = await openBrowser(job);
  try {
    const page = await openComfy(browser, job.base, log);
    const docs = [];  // every help-page request the panel makes (custom nodes: /extensions/<pack>/docs/...)
    page.on('response', (r) => {
      const u = new URL(r.url());
      if (u.pathname.includes('/docs/') && u.pathname.endsWith('.md')) {
        docs.push({ path: u.pathname, status: r.status(), content_type: r.headers()['content-type'] || '' });
      }
    });
    // An empty canvas with the node at a known place, at scale 1.
    const title = await page.evaluate((type) => {
      const app = window.app;
      app.canvas.deselectAll?.();
      app.graph.clear();
      const node = window.LiteGraph.createNode(type);
      if (!node) throw new Error(`node type ${type} is not registered`);
      node.pos = [220, 160];
      app.graph.add(node);
      app.canvas.ds.offset = [0, 0];
      app.canvas.ds.scale = 1;
      app.canvas.setDirty(true, true);
      const th = window.LiteGraph.NODE_TITLE_HEIGHT;
      const [x, y] = app.canvas.ds.convertCanvasToOffset([node.pos[0] + 60, node.pos[1] - th / 2]);
      const box = app.canvas.canvas.getBoundingClientRect();
      return { x: box.left + x, y: box.top + y, id: node.id };
    }, job.node);
    await page.waitForTimeout(300);
    await page.mouse.click(title.x, title.y);  // select it as a user does: a click on its title bar
    const selected = await page.evaluate(() => Object.values(window.app.canvas.selected_nodes || {}).map((n) => n.type));
    if (selected.length !== 1 || selected[0] !== job.node) {
      throw new Error(`clicking the title did not select the node (selected: ${JSON.stringify(selected)})`);
    }
    const info = page.locator('[data-testid="selection-toolbox"] [data-testid="info-button"]');
    await info.waitFor({ state: 'visible', timeout: 30000 });
    await info.click();
    // The Info tab renders the fetched markdown into .node-help-content .markdown-content (NodeHelpContent);
    // on a failed fetch it shows a fallback (description + inputs table) instead, without .markdown-content.
    const panel = page.locator('.node-help-content .markdown-content');
    await panel.first().waitFor({ state: 'visible', timeout: 30000 });
    await page.waitForFunction((want) => {
      const el = document.querySelector('.node-help-content .markdown-content');
      const text = (el && el.innerText) || '';
      return want.every((w) => text.includes(w));
    }, job.expect || [], { timeout: 30000, polling: 200 }).catch(async (e) => {
      const text = await page.evaluate(() => document.querySelector('.node-help-content')?.innerText || '(no panel)');
      throw new Error(`the help panel does not show ${JSON.stringify(job.expect)}; it shows: ${text.slice(0, 800)} (${e})`);
    });
    await page.waitForTimeout(500);  // images/fonts settle
    const shown = await page.evaluate(() => {
      const el = document.querySelector('.node-help-content .markdown-content');
      const tab = document.querySelector('[data-testid="panel-tab-info"]');
      const r = el.getBoundingClientRect();
      return {
        text: el.innerText,
        headings: [...el.querySelectorAll('h1, h2, h3')].map((h) => h.innerText.trim()),
        table_headers: [...el.querySelectorAll('th')].map((h) => h.innerText.trim()),
        box: [r.left, r.top, r.width, r.height],
        info_tab_selected: tab ? (tab.getAttribute('aria-selected') || tab.getAttribute('data-state')) : null,
      };
    });
    fs.mkdirSync(path.dirname(job.shot), { recursive: true });
    await page.screenshot({ path: job.shot });
    return { ...shown, docs, selected, screenshot: job.shot };
  } finally {
    await browser.close();
  }
}

// What a storybook page shows: its title, its images, its redo buttons.
async function storybookInfo(page) {
  return page.evaluate(() => ({
    url: location.href,
    title: document.title,
    images: [...document.images].map((im) => [im.complete, im.naturalWidth, im.getAttribute('src')]),
    redo_buttons: [...document.querySelectorAll('button.seedstory-redo')].map((b) => b.dataset.frame),
  }));
}

async function actionRedo(job, log) {
  const browser = await openBrowser(job);
  try {
    const [width, height] = job.viewport || [1000, 1100];
    const page = await browser.newPage({ viewport: { width, height } });
    page.on('console', (m) => { if (m.type() === 'error') log.console_errors.push(m.text().slice(0, 500)); });
    page.on('pageerror', (e) => log.page_errors.push(String(e && e.stack || e).slice(0, 1000)));
    const requests = [];  // what the page asked the server for (prompt.json, POST /prompt, /history polls)
    page.on('response', (r) => {
      const u = new URL(r.url());
      if (/(^|\/)(prompt\.json|prompt|redo\.js)$/.test(u.pathname) || u.pathname.startsWith('/history/')) {
        requests.push({ path: u.pathname, method: r.request().method(), status: r.status(),
          content_type: r.headers()['content-type'] || '' });
      }
    });
    await page.goto(job.url, { waitUntil: 'load', timeout: 60000 });
    const before = await storybookInfo(page);
    const button = page.locator(`button.seedstory-redo[data-frame="${job.frame}"]`);
    await button.waitFor({ state: 'visible', timeout: 30000 });
    const posted = page.waitForResponse((r) => new URL(r.url()).pathname === '/prompt'
      && r.request().method() === 'POST', { timeout: 30000 });
    const t0 = Date.now();
    await button.click();
    const promptResponse = await (await posted).json();
    const timeout = job.timeout_ms || 180000;
    const moved = page.waitForURL((u) => u.href !== job.url && u.pathname.startsWith('/seedstory/storybook/'),
      { timeout, waitUntil: 'load' }).then(() => 'navigated');
    const failed = page.waitForSelector('#seedstory-redo-status[data-state="error"]', { timeout })
      .then(() => 'error').catch(() => 'navigated');
    if (await Promise.race([moved, failed]) === 'error') {
      const text = await page.locator('#seedstory-redo-status').innerText();
      throw new Error(`the redo failed on the page: ${text}`);
    }
    await moved;
    const ms = Date.now() - t0;
    await page.waitForFunction(() => [...document.images].every((im) => im.complete), null, { timeout: 30000 });
    const after = await storybookInfo(page);
    fs.mkdirSync(path.dirname(job.shot), { recursive: true });
    await page.screenshot({ path: job.shot, fullPage: !!job.full_page });
    return { before, after, prompt_response: promptResponse, requests, redo_ms: ms, screenshot: job.shot };
  } finally {
    await browser.close();
  }
}

// Polls GET /api/history/<id> until the prompt is done; its status and error, in short.
async function waitHistory(base, id, timeout) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const r = await fetch(`${base}/api/history/${id}`);
    const entry = r.ok ? (await r.json())[id] : null;
    const st = entry && entry.status;
    if (st && (st.completed || st.status_str === 'error')) {
      const err = (st.messages || []).find((m) => m[0] === 'execution_error');
      return { status: st.status_str, error: err ? { node_type: err[1].node_type,
        message: String(err[1].exception_message).slice(0, 1500) } : null,
      outputs: Object.keys(entry.outputs || {}) };
    }
    if (Date.now() > deadline) return { status: 'timeout' };
    await new Promise((res) => setTimeout(res, 500));
  }
}

async function actionRunTemplates(job, log) {
  await presetSettings(job.base);
  const browser = await openBrowser(job);
  const results = {};
  try {
    const page = await openComfy(browser, job.base, log);
    const seen = watchTemplateRequests(page, job.module);
    for (const name of job.workflows) {
      const load = await loadTemplate(page, job.module, name, seen);
      if (load.http_status !== 200) { results[name] = { load }; continue; }
      const button = page.getByRole('button', { name: 'Run', exact: true })
        .or(page.getByRole('button', { name: 'Queue Prompt', exact: true })).first();
      await button.waitFor({ state: 'visible', timeout: 30000 });
      const posted = page.waitForResponse((r) => r.url().endsWith('/api/prompt') && r.request().method() === 'POST',
        { timeout: 30000 });
      await button.click();
      const res = await posted;
      const body = await res.json();
      const run = body.prompt_id && res.ok ? await waitHistory(job.base, body.prompt_id, job.timeout_ms || 240000)
        : { status: 'refused', node_errors: body.node_errors || {}, error: body.error || null };
      results[name] = { load: { via: load.via, http_status: load.http_status, active_workflow: load.active_workflow },
        http_status: res.status(), ...run };
      // a refused prompt opens the frontend's error dialog: close it before the next template
      for (let i = 0; i < 2; i += 1) { await page.keyboard.press('Escape'); await page.waitForTimeout(200); }
    }
  } finally {
    await browser.close();
  }
  return { workflows: results };
}

async function main() {
  const job = JSON.parse(await readStdin());
  const log = { blocked: [], console_errors: [], page_errors: [] };
  const actions = { check: actionCheck, queue: actionQueue, shot: actionShot, help: actionHelp, redo: actionRedo,
    runtemplates: actionRunTemplates };
  if (!actions[job.action]) throw new Error(`unknown action ${job.action}`);
  const t0 = Date.now();
  const out = await actions[job.action](job, log);
  process.stdout.write(JSON.stringify({ ...out, log, total_ms: Date.now() - t0 }));
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ error: String(e && e.stack || e) }));
  process.exitCode = 1;
});
