// The BullMQ side of bench/peers/compare.py: starts WORKERS worker processes against a fresh
// Redis, sets the queue's global concurrency to LIMIT, enqueues ORGS jobs in one addBulk, waits
// until every job has finished, and prints one JSON line: wall time, Redis commands (INFO
// commandstats, commands inside scripts included), Redis CPU and memory, per job.
//
// Environment: REDIS_URL (an empty, private server), QUERY_URL, ORGS, WORKERS, CONCURRENCY, LIMIT.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { Queue } from 'bullmq';
import IORedis from 'ioredis';

const env = (name, fallback) => process.env[name] ?? fallback;
const orgs = Number(env('ORGS', '2000'));
const workers = Number(env('WORKERS', '4'));
const limit = Number(env('LIMIT', '50'));

const redis = new IORedis(env('REDIS_URL'), { maxRetriesPerRequest: null });
const info = async (section) =>
  Object.fromEntries((await redis.info(section)).split('\r\n').filter((l) => l.includes(':')).map((l) => l.split(/:(.*)/s).slice(0, 2)));
const cpuUs = async () => {
  const cpu = await info('cpu');
  return (Number(cpu.used_cpu_user) + Number(cpu.used_cpu_sys)) * 1e6;
};

await redis.flushall();
const queue = new Queue('spike-projection', { connection: redis });
await queue.setGlobalConcurrency(limit);

const children = [];
for (let i = 0; i < workers; i++) {
  const child = spawn(process.execPath, [new URL('./worker.mjs', import.meta.url).pathname], {
    env: { ...process.env },
    // stdin stays open while this process lives: a worker exits when it closes.
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  children.push(child);
  const lines = createInterface({ input: child.stdout });
  await new Promise((resolve, reject) => {
    lines.once('line', (l) => (l === 'ready' ? resolve() : reject(new Error(`worker said ${l}`))));
    child.once('exit', (code) => reject(new Error(`worker exited with ${code}`)));
  });
}

await redis.config('RESETSTAT');
const memoryBefore = Number((await info('memory')).used_memory);
const cpuBefore = await cpuUs();
const firstHour = Math.floor(Date.now() / 3600_000) * 3600;
// The same organizations as Projector's synthetic source (shared/src/synthetic.rs): org n has
// projects n*100+1 ..= n*100+k, k = 1 + mix(n, 0, 0) % 4.
const M = (1n << 64n) - 1n;
const mix = (a, b, c) => {
  let z = (a * 0x9e3779b97f4a7c15n + b * 0xc2b2ae3d27d4eb4fn + c * 0x165667b19e3779f9n) & M;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M;
  return z ^ (z >> 31n);
};
const jobs = Array.from({ length: orgs }, (_, i) => {
  const org = i + 1;
  const k = 1 + Number(mix(BigInt(org), 0n, 0n) % 4n);
  const projects = Array.from({ length: k }, (_, j) => org * 100 + 1 + j);
  return { name: 'org', data: { org_id: org, project_ids: projects, first_hour: firstHour }, opts: { jobId: `run-org-${org}` } };
});
const started = Date.now();
await queue.addBulk(jobs);
let counts;
for (;;) {
  counts = await queue.getJobCounts('completed', 'failed');
  if (counts.completed + counts.failed >= orgs) break;
  await new Promise((r) => setTimeout(r, 20));
}
const wallMs = Date.now() - started;
const stats = Object.fromEntries(
  Object.entries(await info('commandstats')).map(([k, v]) => [k.replace('cmdstat_', ''), Number(/calls=(\d+)/.exec(v)?.[1] ?? 0)]),
);
const scriptCalls = ['evalsha', 'eval', 'evalsha_ro', 'eval_ro', 'fcall'].reduce((s, c) => s + (stats[c] ?? 0), 0);
const allCalls = Object.values(stats).reduce((s, n) => s + n, 0);
const top = Object.entries(stats).sort((a, b) => b[1] - a[1]).slice(0, 8).map(([c, n]) => `${c} ${(n / orgs).toFixed(1)}`);
const result = {
  system: 'bullmq',
  completed: counts.completed,
  failed: counts.failed,
  wall_s: wallMs / 1000,
  redis_commands_per_job: allCalls / orgs,
  redis_script_calls_per_job: scriptCalls / orgs,
  top_commands: top,
  redis_cpu_us_per_job: ((await cpuUs()) - cpuBefore) / orgs,
  redis_memory_bytes_per_job: (Number((await info('memory')).used_memory) - memoryBefore) / orgs,
};
for (const child of children) child.kill('SIGTERM');
await Promise.all(children.map((c) => (c.exitCode === null ? once(c, 'exit') : null)));
await queue.close();
await redis.quit();
console.log(JSON.stringify(result));
