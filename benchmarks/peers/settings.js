// Node-RED settings for the benchmark peer: loopback only, no editor credentials encryption
// (the flow's only secret is the Twilio double's throwaway token), quiet logs.
module.exports = {
    uiHost: "127.0.0.1",
    uiPort: parseInt(process.env.NR_PORT || "1880", 10),
    flowFile: "flows.json",
    credentialSecret: false,
    logging: { console: { level: "warn", metrics: false, audit: false } },
    diagnostics: { enabled: false },
    runtimeState: { enabled: false },
    telemetry: { enabled: false },
    editorTheme: { projects: { enabled: false } },
};
