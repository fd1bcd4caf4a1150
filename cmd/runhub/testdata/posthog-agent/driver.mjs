// driver.mjs runs PostHog's published agent package, unchanged, against a
// runhub: the package's event-stream sender (TaskRunEventStreamSender,
// which the package does not export, imported from the TypeScript source
// it ships, through jiti) sends EVENTS events, then the package's API
// client (the exported PostHogAPIClient) makes the calls the agent makes
// during a run. TestPostHogAgentPackage (cmd/runhub/posthog_agent_test.go)
// starts it and reads its stdout: one JSON object per line.
//
// Environment: RUNHUB_API_URL (the API base), RUNHUB_INGEST_URL (the base
// the sender posts to; the test's line-dropping proxy), RUNHUB_KEY (an API
// key with task:write), RUNHUB_INGEST_TOKEN (the run's ingest token),
// RUNHUB_PROJECT, RUNHUB_TASK, RUNHUB_RUN, RUNHUB_EVENTS; RUNHUB_MODE=resume
// instead reads a resumed run's predecessor with resumeFromLog.
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createJiti } from "jiti";
import { PostHogAPIClient } from "@posthog/agent/posthog-api";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const apiUrl = env("RUNHUB_API_URL");
const projectId = Number(env("RUNHUB_PROJECT"));
const taskId = env("RUNHUB_TASK");
const runId = env("RUNHUB_RUN");
const total = Number(env("RUNHUB_EVENTS"));
const key = env("RUNHUB_KEY");

// Each line is flushed at once: the test reads them while the driver runs.
const emit = (obj) => process.stdout.write(`${JSON.stringify({ t: Date.now(), ...obj })}\n`);

// The package's "exports" map hides src/, so its directory is found from
// an exported entry point (dist/posthog-api.js).
const pkgDir = dirname(dirname(fileURLToPath(import.meta.resolve("@posthog/agent/posthog-api"))));
const jiti = createJiti(import.meta.url);
const { TaskRunEventStreamSender } = await jiti.import(join(pkgDir, "src/server/event-stream-sender.ts"));
const { Logger } = await jiti.import(join(pkgDir, "src/utils/logger.ts"));

const logger = new Logger({
  debug: true,
  onLog: (level, _scope, message, data) => {
    if (message === "Task run event ingest stream delivered") {
      // An upload closed with a 2xx: the test compares when the viewer saw
      // its events with this moment.
      emit({ delivered: data.sentThroughSeq, events: data.sentEvents });
    } else if (level === "warn" || level === "error") {
      emit({ log: level, message, data });
    }
  },
});

// The API client, as the agent uses it during a run; first the run
// starts.
const api = new PostHogAPIClient({ apiUrl, projectId, getApiKey: async () => key });
const calls = {};
const call = async (name, fn) => {
  try {
    calls[name] = await fn();
  } catch (error) {
    emit({ failed: name, error: String(error?.message ?? error) });
    process.exit(1);
  }
};

// RUNHUB_MODE=resume: the run was made by resume_in_cloud, and the agent
// server rebuilds its conversation as it does on such a run: the run's
// state names the run it resumes (getResumeRunId), whose log the
// package's resumeFromLog reads.
if (process.env.RUNHUB_MODE === "resume") {
  const { resumeFromLog } = await import("@posthog/agent/resume");
  await call("getTaskRun", () => api.getTaskRun(taskId, runId));
  const from = calls.getTaskRun.state?.resume_from_run_id;
  await call("resumeFromLog", () => resumeFromLog({ taskId, runId: from, apiClient: api, logger }));
  emit({ resume: { from, log_entries: calls.resumeFromLog.logEntryCount } });
  process.exit(0);
}
await call("updateTaskRunInProgress", () => api.updateTaskRun(taskId, runId, { status: "in_progress" }));

// The sender as the agent server builds it when an ingest token is set:
// the run's API base, the token, and the package's defaults for windows,
// buffer and retries.
const sender = new TaskRunEventStreamSender({
  apiUrl: env("RUNHUB_INGEST_URL"),
  projectId,
  taskId,
  runId,
  token: env("RUNHUB_INGEST_TOKEN"),
  logger,
});

// Events arrive as an agent produces them: a few at a time, not all at
// once, so uploads stay open while the test restarts the server.
const perTick = 20;
const tickMs = 20;
for (let i = 1; i <= total; i++) {
  sender.enqueue({
    type: "notification",
    timestamp: new Date().toISOString(),
    notification: {
      jsonrpc: "2.0",
      method: "_runhub/test_event",
      params: { i, sent_ms: Date.now() },
    },
  });
  if (i % perTick === 0) await new Promise((r) => setTimeout(r, tickMs));
}
emit({ enqueued: total });
await sender.stop();
emit({ stopped: true });

// The rest of the agent's calls.
await call("getTask", () => api.getTask(taskId));
await call("getTaskRun", () => api.getTaskRun(taskId, runId));
await call("updateTaskRun", () => api.updateTaskRun(taskId, runId, { stage: "build", branch: "runhub-test" }));
await call("appendTaskRunLog", () =>
  api.appendTaskRunLog(taskId, runId, [
    { type: "notification", timestamp: new Date().toISOString(), notification: { jsonrpc: "2.0", method: "_runhub/appended" } },
  ]),
);
const content = "checkpoint bytes \u00e9\n";
await call("uploadTaskArtifacts", () =>
  api.uploadTaskArtifacts(taskId, runId, [{ name: "checkpoint.txt", type: "artifact", content, content_type: "text/plain" }]),
);
const storagePath = calls.uploadTaskArtifacts[0]?.storage_path;
await call("downloadArtifact", async () => {
  const bytes = await api.downloadArtifact(taskId, runId, storagePath);
  if (bytes === null) throw new Error(`downloadArtifact(${storagePath}) returned null`);
  const text = new TextDecoder().decode(bytes);
  if (text !== content) throw new Error(`downloadArtifact returned ${JSON.stringify(text)}`);
  return text;
});
// The agent's artifact tool uploads straight to storage: prepare_upload,
// a multipart POST of the presigned form, finalize_upload. The package
// falls back to the inline upload when that fails; here the fallback
// fails loudly instead, so only the direct path can pass.
// That tool's source imports the API client's source, which needs a
// workspace package the published one bundles into dist: the import is
// pointed at the published dist/posthog-api.js.
const { uploadRunArtifact } = await createJiti(import.meta.url, {
  alias: { "../../../posthog-api": join(pkgDir, "dist/posthog-api.js") },
}).import(join(pkgDir, "src/adapters/local-tools/tools/artifact-upload.ts"));
const direct = Buffer.alloc(100 * 1024);
for (let i = 0; i < direct.length; i++) direct[i] = (i * 7919) % 251;
await call("uploadRunArtifact", async () => {
  const inline = api.uploadTaskArtifacts;
  api.uploadTaskArtifacts = async () => {
    throw new Error("the direct upload failed and the package fell back to the inline one");
  };
  try {
    return await uploadRunArtifact(api, taskId, runId, {
      name: "screenshot.bin",
      contentType: "application/octet-stream",
      content: direct,
      type: "output",
      source: "agent",
    });
  } finally {
    api.uploadTaskArtifacts = inline;
  }
});
await call("downloadDirect", async () => {
  const bytes = await api.downloadArtifact(taskId, runId, calls.uploadRunArtifact.storage_path);
  if (bytes === null || !Buffer.from(bytes).equals(direct)) {
    throw new Error(`downloadArtifact(${calls.uploadRunArtifact.storage_path}) did not return the uploaded bytes`);
  }
  return bytes.byteLength;
});
await call("setTaskRunOutput", () => api.setTaskRunOutput(taskId, runId, { output: { pr_url: "https://example.com/pr/1" } }));
await call("fetchTaskRunLogs", async () => (await api.fetchTaskRunLogs(calls.getTaskRun)).length);
await call("updateTaskRunCompleted", () => api.updateTaskRun(taskId, runId, { status: "completed" }));
emit({
  api: {
    task: calls.getTask.id,
    run_status: calls.updateTaskRunCompleted.status,
    stage: calls.updateTaskRun.stage,
    storage_path: storagePath,
    downloaded: calls.downloadArtifact,
    direct_upload: { name: calls.uploadRunArtifact.name, size: calls.uploadRunArtifact.size, downloaded: calls.downloadDirect },
    output: calls.setTaskRunOutput.output,
    log_entries: calls.fetchTaskRunLogs,
  },
});
