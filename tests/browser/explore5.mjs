import { chromium } from 'playwright-core';
const base = process.argv[2];
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox','--disable-gpu','--disable-background-networking','--disable-component-update','--disable-sync','--no-first-run','--disable-quic'] });
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.on('pageerror', e => console.log('PAGEERROR', e.message.slice(0, 300)));
page.on('request', r => { if (r.method() !== 'GET') console.log('REQ', r.method(), r.url().replace(base, '')); });
await page.goto(base + '/', { waitUntil: 'networkidle', timeout: 60000 });
await page.waitForTimeout(2000);
console.log('has app', await page.evaluate(() => [typeof window.app, typeof window.comfyAPI]));
console.log('setting', await page.evaluate(() => window.app.extensionManager?.setting?.get('Comfy.Minimap.Visible')));
await page.keyboard.press('Escape');
await page.waitForTimeout(500);
// sidebar buttons
const buttons = await page.locator('button').all();
for (const b of buttons.slice(0, 40)) { const t = (await b.getAttribute('aria-label')) || (await b.innerText()).slice(0,30); const tid = await b.getAttribute('data-testid'); if (t || tid) console.log('BTN', JSON.stringify(t), tid); }
await page.screenshot({ path: '/tmp/fe/e5.png' });
await browser.close();
