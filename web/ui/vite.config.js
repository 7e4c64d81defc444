// Builds the browser view into dist/, which the web crate's build.rs (../build.rs) embeds into the jiandu binary.
import { defineConfig } from 'vite';
import { resolve } from 'node:path';

export default defineConfig({
  base: '/',
  build: {
    outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 2000, sourcemap: false,
    // Pages: the desk view, the field app at /app/ (issue 18), the public tip page at /tip (issue 19).
    rollupOptions: {
      input: {
        main: resolve(import.meta.dirname, 'index.html'),
        app: resolve(import.meta.dirname, 'app/index.html'),
        tip: resolve(import.meta.dirname, 'tip/index.html'),
      },
    },
  },
});
