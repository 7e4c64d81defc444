// Builds the browser view into dist/, which the web crate's build.rs (../build.rs) embeds into the jiandu binary.
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/',
  build: { outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 2000, sourcemap: false },
});
