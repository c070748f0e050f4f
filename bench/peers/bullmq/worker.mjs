// One BullMQ worker process doing Projector's job: for each org, one SnQL query to the (fake)
// query service with the same body and referrer as Projector's client, a projection of the next
// 24 hours per project (the mean of the same hour over the weeks of history), returned as the
// job's result (BullMQ keeps it in the job's hash). The fleet-wide limit is the queue's global
// concurrency, set by bench.mjs before any worker starts.
//
// Environment: REDIS_URL, QUERY_URL (http://host:port), CONCURRENCY (jobs in flight here).
import { Worker } from 'bullmq';
import IORedis from 'ioredis';

const QUEUE = 'spike-projection';
const REFERRER = 'getsentry.get_spike_projections';
const HISTORY_HOURS = 504;

const connection = new IORedis(process.env.REDIS_URL, { maxRetriesPerRequest: null });
const queryUrl = `${process.env.QUERY_URL}/events/snql`;
const concurrency = Number(process.env.CONCURRENCY ?? '60');

function snql(org, projects, end) {
  const start = new Date(end.getTime() - HISTORY_HOURS * 3600_000);
  const iso = (d) => d.toISOString().slice(0, 19);
  const inProjects = projects.length ? ` AND project_id IN tuple(${projects.join(', ')})` : '';
  return `MATCH (events) SELECT count() AS count BY project_id, time WHERE org_id = ${org}${inProjects} ` +
    `AND timestamp >= toDateTime('${iso(start)}') AND timestamp < toDateTime('${iso(end)}') ` +
    'ORDER BY time ASC GRANULARITY 3600';
}

function project(rows, projects) {
  const byProject = new Map(projects.map((p) => [p, new Array(HISTORY_HOURS).fill(0)]));
  const first = rows.length ? Date.parse(rows[0].time) : 0;
  for (const row of rows) {
    const hours = byProject.get(row.project_id);
    const i = Math.round((Date.parse(row.time) - first) / 3600_000);
    if (hours && i >= 0 && i < HISTORY_HOURS) hours[i] = row.count;
  }
  const out = {};
  for (const [p, hours] of byProject) {
    const weeks = Math.floor(HISTORY_HOURS / 168);
    const hourly = Array.from({ length: 24 }, (_, h) => {
      let sum = 0;
      for (let w = 0; w < weeks; w++) sum += hours[w * 168 + h];
      return Math.round(sum / weeks);
    });
    out[p] = { hourly, spike_threshold: Math.max(...hourly) * 3 };
  }
  return out;
}

const worker = new Worker(
  QUEUE,
  async (job) => {
    const { org_id: org, project_ids: projects, first_hour: firstHour } = job.data;
    const response = await fetch(queryUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', referer: REFERRER },
      body: JSON.stringify({
        query: snql(org, projects, new Date(firstHour * 1000)),
        dataset: 'events',
        app_id: 'projector',
        tenant_ids: { organization_id: org, referrer: REFERRER },
        parent_api: 'projector.spike_projection',
      }),
    });
    const text = await response.text();
    if (response.status !== 200) throw new Error(`query service answered ${response.status}: ${text.slice(0, 200)}`);
    return project(JSON.parse(text).data, projects);
  },
  { connection, concurrency },
);
worker.on('ready', () => console.log('ready'));
worker.on('error', (e) => console.error(`worker error: ${e.message}`));
const stop = async () => {
  await worker.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
// The bench holds our stdin open: if it dies, so do we.
process.stdin.on('end', stop);
process.stdin.resume();
