import { defineConfig, type Plugin } from "vite";

/**
 * The demo's stand-in for an application API while developing: `GET /api/batches/:id` answers
 * how many times it was fetched, so the page shows each query refetch an event causes.
 */
function demoApi(): Plugin {
  const fetches = new Map<string, number>();
  return {
    name: "demo-api",
    configureServer(server) {
      server.middlewares.use("/api/batches/", (req, res) => {
        const id = (req.url ?? "").replace(/^\//, "").split("?")[0] ?? "";
        const n = (fetches.get(id) ?? 0) + 1;
        fetches.set(id, n);
        res.setHeader("content-type", "application/json");
        res.end(JSON.stringify({ batchId: id, fetches: n }));
      });
    },
  };
}

export default defineConfig({
  plugins: [demoApi()],
  esbuild: { jsx: "automatic" },
  build: {
    rollupOptions: {
      input: { main: "index.html", bench: "bench.html" },
      // TanStack Query marks its modules "use client" (for server components); meaningless here.
      onwarn(warning, warn) {
        if (warning.code !== "MODULE_LEVEL_DIRECTIVE") warn(warning);
      },
    },
  },
  server: { host: "127.0.0.1", port: 5173 },
});
