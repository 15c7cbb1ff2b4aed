"""Cron and interval schedules (`@app.cron`): every worker process evaluates them, and each tick's events are
appended once, by the dedup of event ids derived from (schedule, tick). No leader; Redis keeps only what each
schedule fired last and whether it is paused.

    cron.py      when ticks fall: cron expressions (croniter; time zones, DST) and epoch-aligned intervals
    declare.py   a schedule as declared, checked at registration; calling its function for a tick
    misfire.py   which due ticks an evaluation fires (on time, or missed: latest / skip / all) and how long their
                 dedup markers must live
    fire.py      publishing a tick's events with derived event ids
    state.py     the namespace's schedules hash: last fired tick, paused, resumed
    runner.py    the evaluation loop of a worker process
    ops.py       list, pause, resume, trigger (`streamproc schedules`)
"""
