// The field app's service worker (scope /app/): after the first visit the app's shell (its page,
// script, style, manifest and icon) opens without a network, so an inspector out of coverage
// still sees the queue and can take photos. The page is fetched network-first (a new version is
// picked up when online), hashed assets cache-first (their names change with their content).
// MQTT (the WebSocket on /mqtt) and the API are never cached.
const CACHE = 'jiandu-app-v1';
const SHELL = ['/app/', '/app/manifest.webmanifest', '/app/icon.svg'];

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    await cache.addAll(SHELL);
    // The page names its hashed script and style: cache those too.
    const page = await (await cache.match('/app/')).text();
    const assets = [...new Set(page.match(/\/assets\/[A-Za-z0-9._-]+/g) ?? [])];
    await cache.addAll(assets);
    await self.skipWaiting();
  })());
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) if (key !== CACHE) await caches.delete(key);
    await self.clients.claim();
  })());
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== location.origin) return;
  if (url.pathname.startsWith('/assets/')) {
    event.respondWith((async () => {
      const hit = await caches.match(event.request);
      if (hit) return hit;
      const resp = await fetch(event.request);
      if (resp.ok) (await caches.open(CACHE)).put(event.request, resp.clone());
      return resp;
    })());
  } else if (event.request.mode === 'navigate' && url.pathname.startsWith('/app')) {
    event.respondWith((async () => {
      try {
        const resp = await fetch(event.request);
        if (resp.ok) (await caches.open(CACHE)).put('/app/', resp.clone());
        return resp;
      } catch {
        return (await caches.match('/app/')) ?? Response.error();
      }
    })());
  } else if (SHELL.includes(url.pathname)) {
    event.respondWith(caches.match(url.pathname).then((hit) => hit ?? fetch(event.request)));
  }
});

// A tap on an assignment notification opens (or focuses) the app.
self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  event.waitUntil((async () => {
    const open = await self.clients.matchAll({ type: 'window' });
    const app = open.find((c) => new URL(c.url).pathname.startsWith('/app'));
    return app ? app.focus() : self.clients.openWindow('/app/#/duty');
  })());
});
