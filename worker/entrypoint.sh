#!/bin/sh
# Container entrypoint: runs the reference worker; settings come from the environment
# (STREAMQ_URL, STREAMQ_CONCURRENCY, STREAMQ_QUEUES).
set -eu
exec streamq worker "${STREAMQ_TASKS:-worker.tasks}" \
  -c "${STREAMQ_CONCURRENCY:-2}" \
  ${STREAMQ_QUEUES:+-Q "$STREAMQ_QUEUES"} \
  --log-format "${STREAMQ_LOG_FORMAT:-json}"
