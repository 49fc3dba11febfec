#!/usr/bin/env node
// How a web app (not part of grsai-pipeline) hands a batch of videos to the pipeline by writing
// it straight into the PostgreSQL application database (SPEC sections 1 and 2):
//
//   1. ONE transaction: a `batch_jobs` row (status 'pending') and one `video_tasks` row per
//      prompt (status 'queued'). Nothing else: no price, no credit entries.
//   2. Then, like a page that refreshes, a short read every --poll-s seconds: the batch's status
//      and credits, each task's status, progress and video URL, until the batch is 'settled'.
//
// The pipeline does everything in between: it validates and prices each task from its own price
// table, reserves the whole batch (or fails it INSUFFICIENT_CREDITS), submits, follows and settles.
//
// Usage: node write-batch.mjs --user <id> [--prompt <text>]... [--model sora-2] [--duration 10]
//                             [--wait-s 120] [--poll-s 1]
// Exit codes: 0 written (--wait-s 0) or settled; 1 timeout or database error; 2 bad usage/setup.
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import pg from "pg";

const DEFAULT_PROMPTS = ["a lighthouse at dawn", "waves on a pebble beach"];
const STATUS_ORDER = ["pending", "queued", "processing", "succeeded", "failed"];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const usageError = (message) => {
  process.stderr.write(`write-batch: ${message}\n`);
  process.exit(2);
};

// DATABASE_URL is a libpq URL; the pipeline's own GRSAI_DATABASE_URL is a SQLAlchemy URL, so
// drop its driver suffix: postgresql+psycopg2://... -> postgresql://...
function databaseUrl(env) {
  const url = env.DATABASE_URL || (env.GRSAI_DATABASE_URL ?? "").replace(/^(postgres(?:ql)?)\+\w+:/, "$1:");
  if (!url) usageError("set DATABASE_URL (or GRSAI_DATABASE_URL) to the PostgreSQL application database");
  if (!/^postgres(ql)?:\/\//.test(url)) usageError("the database URL must be a postgresql:// URL");
  return url;
}

function parseCli(argv) {
  let values;
  try {
    ({ values } = parseArgs({ args: argv, strict: true, allowPositionals: false, options: {
      user: { type: "string" },
      prompt: { type: "string", multiple: true },
      model: { type: "string", default: "sora-2" },
      duration: { type: "string", default: "10" },
      "wait-s": { type: "string", default: "120" },
      "poll-s": { type: "string", default: "1" },
    } }));
  } catch (err) {
    usageError(err.message.split("\n")[0]);
  }
  const number = (name, ok) => {
    const value = Number(values[name]);
    if (values[name].trim() === "" || !Number.isFinite(value) || !ok(value)) usageError(`bad --${name}: ${values[name]}`);
    return value;
  };
  if (!values.user?.trim()) usageError("--user <id> is required (a non-empty user id)");
  if (!values.model.trim()) usageError("--model must not be empty");
  const isVeo = values.model.startsWith("veo");
  return {
    user: values.user,
    // Prompts are written as given: the pipeline validates every task again (an empty prompt
    // or an unknown model becomes a failed task with an INVALID_INPUT: message).
    prompts: values.prompt ?? DEFAULT_PROMPTS,
    model: values.model,
    aspectRatio: isVeo ? "16:9" : "9:16",
    duration: isVeo ? null : number("duration", Number.isInteger),
    waitS: number("wait-s", (v) => v >= 0),
    pollS: number("poll-s", (v) => v > 0),
  };
}

// The whole batch in one transaction, parameterised queries only. The writer never sets `price`
// and never writes `credit_accounts` or `credit_ledger`: the pipeline prices and reserves the
// batch itself, and a price a writer puts on a row is not trusted.
async function writeBatch(pool, cli) {
  const batchId = randomUUID();
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    await client.query(
      `INSERT INTO batch_jobs (id, user_id, status, total_tasks, created_at, updated_at)
       VALUES ($1, $2, 'pending', $3, now(), now())`,
      [batchId, cli.user, cli.prompts.length],
    );
    for (const [index, prompt] of cli.prompts.entries()) {
      await client.query(
        `INSERT INTO video_tasks (id, user_id, batch_job_id, batch_index, status, prompt, model,
                                  aspect_ratio, duration, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, now(), now())`,
        [randomUUID(), cli.user, batchId, index, prompt, cli.model, cli.aspectRatio, cli.duration],
      );
    }
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {});
    throw err;
  } finally {
    client.release();
  }
  return batchId;
}

// One short query, as a page load would make: one statement, so one consistent snapshot.
// pg returns BIGINT (the credit columns) as strings: convert them to numbers.
async function readBatch(pool, batchId) {
  const { rows } = await pool.query(
    `SELECT b.status AS batch_status, b.reserved_credits, b.charged_credits, b.refunded_credits,
            b.error_message AS batch_error, t.batch_index, t.status, t.progress, t.video_url, t.error_message
       FROM batch_jobs b LEFT JOIN video_tasks t ON t.batch_job_id = b.id
      WHERE b.id = $1 ORDER BY t.batch_index`,
    [batchId],
  );
  if (rows.length === 0) throw new Error(`batch ${batchId} is gone`);
  const [b] = rows;
  return {
    batch_id: batchId, status: b.batch_status, reserved_credits: Number(b.reserved_credits),
    charged_credits: Number(b.charged_credits), refunded_credits: Number(b.refunded_credits),
    error_message: b.batch_error,
    tasks: rows.filter((r) => r.batch_index !== null).map((r) => ({
      batch_index: r.batch_index, status: r.status, progress: r.progress,
      video_url: r.video_url, error_message: r.error_message,
    })),
  };
}

// "running: 1 processing (40%), 1 succeeded"
function picture(batch) {
  const counts = STATUS_ORDER.map((status) => {
    const tasks = batch.tasks.filter((t) => t.status === status);
    if (tasks.length === 0) return null;
    const mean = Math.round(tasks.reduce((sum, t) => sum + t.progress, 0) / tasks.length);
    return `${tasks.length} ${status}${status === "processing" ? ` (${mean}%)` : ""}`;
  }).filter(Boolean);
  return `${batch.status}: ${counts.join(", ")}${batch.error_message ? ` (${batch.error_message})` : ""}`;
}

async function main() {
  const cli = parseCli(process.argv.slice(2));
  const pool = new pg.Pool({ connectionString: databaseUrl(process.env), max: 2 });
  try {
    const batchId = await writeBatch(pool, cli);
    console.log(`batch ${batchId}`);
    if (cli.waitS === 0) return;
    const deadline = Date.now() + cli.waitS * 1000;
    let shown = null;
    for (;;) {
      const batch = await readBatch(pool, batchId);
      const line = picture(batch);
      if (line !== shown) console.log((shown = line));
      if (batch.status === "settled") {
        for (const t of batch.tasks) {
          console.log(`#${t.batch_index} ${t.status} ${t.video_url ?? t.error_message ?? ""}`.trimEnd());
        }
        const tasks = batch.tasks.map(({ progress, ...task }) => task);
        console.log(JSON.stringify({ ...batch, tasks }));
        return;
      }
      if (Date.now() >= deadline) {
        process.stderr.write(`write-batch: batch ${batchId} not settled after ${cli.waitS} s (${line})\n`);
        process.exitCode = 1;
        return;
      }
      await sleep(Math.min(cli.pollS * 1000, Math.max(0, deadline - Date.now())));
    }
  } catch (err) {
    const message = err.message || err.code || String(err);
    process.stderr.write(`write-batch: database error: ${message.split("\n")[0]}\n`);
    process.exitCode = 1;
  } finally {
    await pool.end();
  }
}

await main();
