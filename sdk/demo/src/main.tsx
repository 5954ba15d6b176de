import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { RealtimeProvider } from "@realtime-gateway/react";
import { sessionPositions } from "@realtime-gateway/client";
import { App } from "./App.js";
import { debug, gatewayUrl, getToken } from "./config.js";

const queryClient = new QueryClient();
const storage = sessionPositions();

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <QueryClientProvider client={queryClient}>
      <RealtimeProvider url={gatewayUrl} getToken={getToken} queryClient={queryClient} storage={storage} debug={debug}>
        <App />
      </RealtimeProvider>
    </QueryClientProvider>
  </StrictMode>,
);
