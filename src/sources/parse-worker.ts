/**
 * The folder source's parsing worker: reads a big manifest file's text into plain objects and errors off the
 * event loop (files.ts ParseWorker). One file at a time, in the order asked. It says `ready` once its modules
 * have loaded, and answers each file with the size of its heap after the parse, so that a worker a big file grew
 * is replaced (its heap is bounded by the resource limits it is started with).
 */
import { getHeapStatistics } from 'node:v8';
import { parentPort, workerData } from 'node:worker_threads';
import { loadRetrySchema } from './crd.js';
import { readManifestText } from './files.js';

const schema = (workerData as { schema: boolean }).schema ? loadRetrySchema() : undefined;
parentPort!.on('message', ({ text, file }: { text: string; file: string }) => {
  const result = readManifestText(text, file, schema);
  parentPort!.postMessage({ result, heapBytes: getHeapStatistics().total_heap_size });
});
parentPort!.postMessage('ready');
