"""The job queue: jobs in Postgres (sql/functions/050_queue.sql), pushed by functions, the API and the CLI
(`jobs.py`), run by workers (`worker.py`, which loads the runtime), and scheduled by cron (`cron.py`)."""

from flux.queue.jobs import cancel, get_job, list_jobs, push, retry, stats

__all__ = ["cancel", "get_job", "list_jobs", "push", "retry", "stats"]
