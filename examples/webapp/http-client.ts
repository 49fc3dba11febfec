// How a web app (not part of grsai-pipeline) orders a batch of videos over the pipeline's HTTP
// API (SPEC 9) instead of writing rows, with a client typed from the API's own /openapi.json
// (api-schema.d.ts, made by openapi-typescript; requests by openapi-fetch):
//
//   1. POST /v1/batches with an Idempotency-Key (a random UUID): 201 and the batch, priced and
//      reserved by the pipeline (402 and nothing written when the user's credits are short).
//   2. The very same request again, as a retry after a lost answer would be: it must answer 200
//      with the same batch and `Idempotent-Replayed: true`, not make a second batch.
//   3. Like a page that refreshes, GET /v1/batches/{id} every --poll-s seconds until the batch
//      is `settled`.
//   4. The batch's entries of the user's ledger, page by page (next_cursor), and the credits.
//
// Usage: GRSAI_API_TOKEN=<token> node --import tsx http-client.ts --user <id>
//          [--base-url http://127.0.0.1:8790] [--prompt <text>]... [--model sora-2]
//          [--duration 10] [--wait-s 120] [--poll-s 1] [--page-size 100]
// Exit codes: 0 created (--wait-s 0) or settled; 1 not settled in time, an error answer (its
// problem detail on stderr), no answer, or a retry that was not replayed; 2 bad usage/setup.
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import createClient from "openapi-fetch";
import type { components, paths } from "./api-schema.js";

type Batch = components["schemas"]["BatchOut"];
type CreateBatch = components["schemas"]["CreateBatch"];
type Task = CreateBatch["tasks"][number];
type LedgerEntry = components["schemas"]["LedgerEntryOut"];
type Credits = components["schemas"]["CreditsOut"];

// The models and Sora durations the schema allows (checked against it by `tsc`).
const MODELS = ["sora-2", "veo-flash", "veo-pro"] as const satisfies readonly Task["model"][];
const SORA_DURATIONS = [10, 15] as const satisfies readonly NonNullable<Task["duration"]>[];
const DEFAULT_PROMPTS = ["a lighthouse at dawn", "waves on a pebble beach"];
const STATUS_ORDER = ["pending", "queued", "processing", "succeeded", "failed"];
const REQUEST_TIMEOUT_MS = 30_000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

class Failure extends Error {}

const usageError = (message: string): never => {
  process.stderr.write(`http-client: ${message}\n`);
  process.exit(2);
};

interface Cli {
  baseUrl: string;
  token: string;
  user: string;
  tasks: Task[];
  waitS: number;
  pollS: number;
  pageSize: number;
}

function parseCli(argv: string[], env: NodeJS.ProcessEnv): Cli {
  const options = {
    "base-url": { type: "string", default: env.GRSAI_API_URL || "http://127.0.0.1:8790" },
    user: { type: "string" },
    prompt: { type: "string", multiple: true },
    model: { type: "string", default: "sora-2" },
    duration: { type: "string", default: "10" },
    "wait-s": { type: "string", default: "120" },
    "poll-s": { type: "string", default: "1" },
    "page-size": { type: "string", default: "100" },
  } as const;
  let parsed;
  try {
    parsed = parseArgs({ args: argv, strict: true, allowPositionals: false, options });
  } catch (err) {
    return usageError((err as Error).message.split("\n")[0] ?? "bad usage");
  }
  const { values } = parsed;
  const number = (name: "duration" | "wait-s" | "poll-s" | "page-size", ok: (v: number) => boolean) => {
    const text = values[name];
    const value = Number(text);
    if (text.trim() === "" || !Number.isFinite(value) || !ok(value)) usageError(`bad --${name}: ${text}`);
    return value;
  };
  const token = env.GRSAI_API_TOKEN || usageError("set GRSAI_API_TOKEN to a token made by `grsai-pipeline api token create NAME`");
  const user = values.user?.trim() ? values.user : usageError("--user <id> is required (a non-empty user id)");
  const model = MODELS.find((known) => known === values.model) ?? usageError(`--model must be one of ${MODELS.join(", ")}`);
  let baseUrl = values["base-url"];
  try {
    baseUrl = new URL(baseUrl).href.replace(/\/$/, "");
  } catch {
    usageError(`bad --base-url: ${baseUrl}`);
  }
  const isVeo = model.startsWith("veo");
  const duration = number("duration", Number.isInteger);
  const soraDuration = isVeo
    ? undefined
    : SORA_DURATIONS.find((known) => known === duration) ?? usageError(`--duration must be ${SORA_DURATIONS.join(" or ")} for Sora`);
  // Prompts go as given: the pipeline validates every task again (an empty prompt becomes a
  // failed task with an INVALID_INPUT: message that costs nothing).
  const tasks = (values.prompt ?? DEFAULT_PROMPTS).map((prompt): Task => ({
    prompt,
    model,
    aspect_ratio: isVeo ? "16:9" : "9:16",
    ...(soraDuration === undefined ? {} : { duration: soraDuration }),
  }));
  return {
    baseUrl,
    token,
    user,
    tasks,
    waitS: number("wait-s", (v) => v >= 0),
    pollS: number("poll-s", (v) => v > 0),
    pageSize: number("page-size", (v) => Number.isInteger(v) && v >= 1 && v <= 1000),
  };
}

// An error answer is application/problem+json (RFC 9457): its `detail` is the pipeline's own
// one-line message. Anything else (a proxy's page) is shown by its status.
function answerFailure(what: string, response: Response, error: unknown): Failure {
  const detail =
    typeof error === "object" && error !== null && "detail" in error && typeof error.detail === "string"
      ? error.detail
      : String(typeof error === "string" ? error.slice(0, 200) : JSON.stringify(error));
  return new Failure(`${what}: ${response.status} ${detail}`);
}

// Every request with a deadline, so that a server that stops answering cannot hang the page.
const deadline = () => ({ signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });

function makeApi(cli: Cli) {
  return createClient<paths>({ baseUrl: cli.baseUrl, headers: { Authorization: `Bearer ${cli.token}` } });
}
type Api = ReturnType<typeof makeApi>;

// The same key and the same body: the pipeline stores the batch once and answers a retry with
// the first answer, so a web app may retry a POST whose answer it lost.
async function postBatch(api: Api, body: CreateBatch, key: string) {
  const { data, error, response } = await api.POST("/v1/batches", {
    body,
    params: { header: { "Idempotency-Key": key } },
    ...deadline(),
  });
  if (error !== undefined) throw answerFailure("POST /v1/batches", response, error);
  return { batch: data, status: response.status, replayed: response.headers.get("Idempotent-Replayed") };
}

async function readBatch(api: Api, batchId: string): Promise<Batch> {
  const { data, error, response } = await api.GET("/v1/batches/{batch_id}", {
    params: { path: { batch_id: batchId } },
    ...deadline(),
  });
  if (error !== undefined) throw answerFailure(`GET /v1/batches/${batchId}`, response, error);
  return data;
}

// The batch's entries, oldest first, following next_cursor to the last page.
async function readLedger(api: Api, user: string, batchId: string, pageSize: number) {
  const entries: LedgerEntry[] = [];
  let cursor: string | undefined;
  let pages = 0;
  do {
    const { data, error, response } = await api.GET("/v1/users/{user_id}/ledger", {
      params: {
        path: { user_id: user },
        query: { batch_id: batchId, limit: pageSize, ...(cursor === undefined ? {} : { cursor }) },
      },
      ...deadline(),
    });
    if (error !== undefined) throw answerFailure(`GET /v1/users/${user}/ledger`, response, error);
    entries.push(...data.entries);
    pages += 1;
    cursor = data.next_cursor ?? undefined;
  } while (cursor !== undefined);
  return { entries, pages };
}

async function readCredits(api: Api, user: string): Promise<Credits> {
  const { data, error, response } = await api.GET("/v1/users/{user_id}/credits", {
    params: { path: { user_id: user } },
    ...deadline(),
  });
  if (error !== undefined) throw answerFailure(`GET /v1/users/${user}/credits`, response, error);
  return data;
}

// "running: 1 processing (40%), 1 succeeded"
function picture(batch: Batch): string {
  const counts = STATUS_ORDER.map((status) => {
    const tasks = batch.tasks.filter((t) => t.status === status);
    if (tasks.length === 0) return null;
    const mean = Math.round(tasks.reduce((sum, t) => sum + t.progress, 0) / tasks.length);
    return `${tasks.length} ${status}${status === "processing" ? ` (${mean}%)` : ""}`;
  }).filter(Boolean);
  return `${batch.status}: ${counts.join(", ")}`;
}

async function run(cli: Cli): Promise<void> {
  const api = makeApi(cli);
  const body: CreateBatch = { user_id: cli.user, tasks: cli.tasks };
  const key = randomUUID();

  const created = await postBatch(api, body, key);
  if (created.status !== 201) throw new Failure(`POST /v1/batches answered ${created.status}, not 201, for a new key`);
  const batchId = created.batch.batch_id;
  console.log(`batch ${batchId}`);

  const retried = await postBatch(api, body, key);
  if (retried.status !== 200 || retried.replayed !== "true" || retried.batch.batch_id !== batchId) {
    throw new Failure(
      `the retry with the same Idempotency-Key answered ${retried.status}, batch ${retried.batch.batch_id}, ` +
        `Idempotent-Replayed: ${retried.replayed ?? "(absent)"}; expected 200, batch ${batchId}, true`,
    );
  }
  console.log(`replayed ${batchId}`);

  let batch = retried.batch;
  const until = Date.now() + cli.waitS * 1000;
  let shown: string | null = null;
  for (;;) {
    const line = picture(batch);
    if (line !== shown) console.log((shown = line));
    if (batch.status === "settled" || cli.waitS === 0) break;
    if (Date.now() >= until) {
      throw new Failure(`batch ${batchId} not settled after ${cli.waitS} s (${line})`);
    }
    await sleep(Math.min(cli.pollS * 1000, Math.max(0, until - Date.now())));
    batch = await readBatch(api, batchId);
  }

  if (batch.status === "settled") {
    for (const t of batch.tasks) {
      console.log(`#${t.batch_index} ${t.status} ${t.video_url ?? t.error_message ?? ""}`.trimEnd());
    }
  }
  const ledger = await readLedger(api, cli.user, batchId, cli.pageSize);
  const credits = await readCredits(api, cli.user);
  const replay = { status: retried.status, idempotent_replayed: retried.replayed, batch_id: retried.batch.batch_id };
  console.log(JSON.stringify({ batch, replay, ledger: ledger.entries, ledger_pages: ledger.pages, credits }));
}

async function main(): Promise<void> {
  const cli = parseCli(process.argv.slice(2), process.env);
  try {
    await run(cli);
  } catch (err) {
    if (err instanceof Failure) {
      process.stderr.write(`http-client: ${err.message}\n`);
    } else {
      // fetch's own errors: no server there, a refused or cut connection, our deadline.
      const error = err as Error & { cause?: { code?: string; message?: string } };
      const why = error.name === "TimeoutError" ? `no answer within ${REQUEST_TIMEOUT_MS / 1000} s` : (error.cause?.code ?? error.cause?.message ?? error.message);
      process.stderr.write(`http-client: no answer from ${cli.baseUrl}: ${why}\n`);
    }
    process.exitCode = 1;
  }
}

await main();
