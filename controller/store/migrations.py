"""Numbered schema migrations for the SQLite store, from the first table on.

Migration N brings ``PRAGMA user_version`` from N-1 to N. Append only: a released
migration is never edited, a change is a new one.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: devices and whether their stream is up.
    """
    CREATE TABLE devices (
        device_id      TEXT PRIMARY KEY,
        kind           TEXT NOT NULL,
        school_id      TEXT NOT NULL,
        room_id        TEXT NOT NULL,
        hostname       TEXT NOT NULL DEFAULT '',
        agent_version  TEXT NOT NULL DEFAULT '',
        first_seen     REAL NOT NULL,
        -- 0 while no stream carries the device; otherwise the stream's id, so that
        -- a replaced stream closing late cannot mark its successor down.
        stream_id      INTEGER NOT NULL DEFAULT 0,
        offline_after  REAL NOT NULL,
        last_heartbeat REAL,
        last_seq       INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX devices_by_school_kind ON devices (school_id, kind);
    """,
    # 2: the latest health each device reported.
    """
    ALTER TABLE devices ADD COLUMN collected_at REAL;
    ALTER TABLE devices ADD COLUMN cpu_percent REAL;
    ALTER TABLE devices ADD COLUMN memory_percent REAL;
    ALTER TABLE devices ADD COLUMN disk_percent REAL;
    ALTER TABLE devices ADD COLUMN uptime_seconds REAL;
    ALTER TABLE devices ADD COLUMN load1 REAL;
    ALTER TABLE devices ADD COLUMN load5 REAL;
    ALTER TABLE devices ADD COLUMN load15 REAL;
    """,
    # 3: what the device runs, its own verdict and full report, counts that show
    #    whether every message arrived once, and the results of commands.
    """
    ALTER TABLE devices ADD COLUMN os_name TEXT;
    ALTER TABLE devices ADD COLUMN os_version TEXT;
    ALTER TABLE devices ADD COLUMN kernel TEXT NOT NULL DEFAULT '';
    ALTER TABLE devices ADD COLUMN boot_time REAL;
    -- ok, degraded or critical; NULL until a heartbeat with a verdict arrives.
    ALTER TABLE devices ADD COLUMN condition TEXT;
    -- One reason per line.
    ALTER TABLE devices ADD COLUMN reasons TEXT NOT NULL DEFAULT '';

    ALTER TABLE devices ADD COLUMN spool_pending INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN spool_dropped INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN heartbeats_stored INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN seq_gaps INTEGER NOT NULL DEFAULT 0;
    -- schoolfleet.v1 SystemReport and NetworkReport, stored whole, and when. Apart
    -- from devices, whose small rows every heartbeat updates: these come one in ten.
    CREATE TABLE device_reports (
        device_id      TEXT PRIMARY KEY,
        system_report  BLOB NOT NULL,
        network_report BLOB NOT NULL,
        report_at      REAL NOT NULL,
        -- The device's clock when it collected them: a replayed older report never
        -- replaces a newer one.
        report_collected_at REAL NOT NULL
    );
    CREATE TABLE command_results (
        device_id   TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        command_id  TEXT NOT NULL,
        status      TEXT NOT NULL,
        message     TEXT NOT NULL,
        finished_at REAL NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (device_id, seq)
    );
    """,
    # 4: enrollment tokens; only a hash of each secret is kept.
    """
    CREATE TABLE enroll_tokens (
        token_id   TEXT PRIMARY KEY,
        token_hash BLOB NOT NULL UNIQUE,
        school_id  TEXT NOT NULL,
        uses_left  INTEGER NOT NULL,
        uses       INTEGER NOT NULL DEFAULT 0,
        expires_at REAL NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE INDEX enroll_tokens_by_school ON enroll_tokens (school_id);
    """,
    # 5: the certificate each enrolled device was issued.
    """
    CREATE TABLE enrollments (
        device_id   TEXT PRIMARY KEY,
        school_id   TEXT NOT NULL,
        serial      TEXT NOT NULL,
        not_after   REAL NOT NULL,
        enrolled_at REAL NOT NULL,
        token_id    TEXT NOT NULL,
        -- Set by `schoolctl devices reenroll`: the next enrollment may replace this one.
        reenroll    INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 6: decommissioned devices may not connect until they enroll again.
    """
    ALTER TABLE enrollments ADD COLUMN revoked_at REAL;
    """,
    # 7: people's bearer tokens (hashes only), and the audit log of the admin API.
    """
    CREATE TABLE users (
        name       TEXT PRIMARY KEY,
        role       TEXT NOT NULL,
        -- Comma-separated school ids; empty: every school.
        schools    TEXT NOT NULL,
        token_hash BLOB NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        expires_at REAL,
        revoked_at REAL
    );
    CREATE TABLE audit (
        entry_id  INTEGER PRIMARY KEY AUTOINCREMENT,
        at        REAL NOT NULL,
        actor     TEXT NOT NULL,
        action    TEXT NOT NULL,
        target    TEXT NOT NULL,
        school_id TEXT NOT NULL,
        outcome   TEXT NOT NULL,
        message   TEXT NOT NULL,
        peer      TEXT NOT NULL
    );
    CREATE INDEX audit_by_school ON audit (school_id, entry_id);
    CREATE INDEX audit_by_actor ON audit (actor, entry_id);
    """,
    # 8: rooms, the lesson schedule, the command outbox and what panels said of lessons.
    """
    CREATE TABLE rooms (
        school_id TEXT NOT NULL,
        room_id   TEXT NOT NULL,
        PRIMARY KEY (school_id, room_id)
    );
    INSERT INTO rooms SELECT DISTINCT school_id, room_id FROM devices WHERE room_id != '';
    CREATE TABLE lessons (
        lesson_id     TEXT PRIMARY KEY,
        school_id     TEXT NOT NULL,
        room_id       TEXT NOT NULL,
        starts_at     REAL NOT NULL,
        ends_at       REAL NOT NULL,
        class_name    TEXT NOT NULL,
        subject       TEXT NOT NULL,
        teacher       TEXT NOT NULL,
        content_url   TEXT NOT NULL,
        remote        INTEGER NOT NULL,
        -- 1: launched by hand (schoolctl lessons launch), not from the schedule.
        manual        INTEGER NOT NULL DEFAULT 0,
        -- scheduled, dispatched, then an outcome: held, partly-held, failed, no-device.
        state         TEXT NOT NULL DEFAULT 'scheduled',
        reason        TEXT NOT NULL DEFAULT '',
        dispatched_at REAL,
        ended_at      REAL,
        updated_at    REAL NOT NULL
    );
    CREATE INDEX lessons_by_room ON lessons (school_id, room_id, starts_at);
    CREATE INDEX lessons_by_state ON lessons (state, starts_at);
    CREATE INDEX lessons_by_start ON lessons (starts_at);
    -- The panels a lesson was dispatched to, and what each said.
    CREATE TABLE lesson_panels (
        lesson_id     TEXT NOT NULL,
        device_id     TEXT NOT NULL,
        command_id    TEXT NOT NULL,
        launched_at   REAL,
        failed_reason TEXT,
        failed_at     REAL,
        ended_at      REAL,
        PRIMARY KEY (lesson_id, device_id)
    );
    -- Commands waiting for a device: sent on every stream open until done or expired.
    CREATE TABLE outbox (
        command_id TEXT PRIMARY KEY,
        device_id  TEXT NOT NULL,
        lesson_id  TEXT NOT NULL,
        -- a serialized schoolfleet.v1.Command
        command    BLOB NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        done_at    REAL
    );
    CREATE INDEX outbox_pending ON outbox (device_id, expires_at) WHERE done_at IS NULL;
    CREATE TABLE lesson_events (
        device_id   TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        lesson_id   TEXT NOT NULL,
        command_id  TEXT NOT NULL,
        kind        TEXT NOT NULL,
        reason      TEXT,
        message     TEXT NOT NULL,
        at          REAL NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (device_id, seq)
    );
    CREATE INDEX lesson_events_by_lesson ON lesson_events (lesson_id);
    """,
    # 9: where Ansible reaches a device and its labels; rollouts, their hosts and
    #    waves, the one-rollout-per-host claims, and schools' maintenance windows.
    """
    -- The address the device's stream came from, or the one its agent names.
    ALTER TABLE devices ADD COLUMN address TEXT NOT NULL DEFAULT '';
    -- A JSON object of the agent's labels, e.g. {"grade": "5"}.
    ALTER TABLE devices ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE rollouts (
        rollout_id      INTEGER PRIMARY KEY,
        playbook        TEXT NOT NULL,
        selector        TEXT NOT NULL,
        -- JSON: canary, wave_size, max_fail, extra_vars, gate_lessons
        spec            TEXT NOT NULL,
        -- running, paused, halted, aborted, done
        state           TEXT NOT NULL,
        reason          TEXT NOT NULL DEFAULT '',
        created_by      TEXT NOT NULL,
        created_at      REAL NOT NULL,
        updated_at      REAL NOT NULL,
        finished_at     REAL,
        baseline_tried  INTEGER NOT NULL DEFAULT 0,
        baseline_failed INTEGER NOT NULL DEFAULT 0,
        waiting         TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX rollouts_by_state ON rollouts (state);
    CREATE TABLE rollout_hosts (
        rollout_id  INTEGER NOT NULL,
        device_id   TEXT NOT NULL,
        school_id   TEXT NOT NULL,
        -- NULL until the host's wave starts
        wave        INTEGER,
        -- pending, running, ok, changed, failed, unreachable, cancelled
        outcome     TEXT NOT NULL DEFAULT 'pending',
        task        TEXT NOT NULL DEFAULT '',
        message     TEXT NOT NULL DEFAULT '',
        started_at  REAL,
        finished_at REAL,
        PRIMARY KEY (rollout_id, device_id)
    );
    -- Counts by outcome, and the pending or running hosts a wave or an end moves,
    -- without reading a rollout's 20,000 rows.
    CREATE INDEX rollout_hosts_by_outcome ON rollout_hosts (rollout_id, outcome);
    -- A caller's school scope: does the rollout have a host in these schools?
    CREATE INDEX rollout_hosts_by_school ON rollout_hosts (rollout_id, school_id);
    CREATE TABLE rollout_waves (
        rollout_id  INTEGER NOT NULL,
        wave        INTEGER NOT NULL,
        hosts       INTEGER NOT NULL,
        started_at  REAL NOT NULL,
        finished_at REAL,
        failed      INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (rollout_id, wave)
    );
    -- A host is in at most one unfinished rollout: its claim is taken with the
    -- rollout's rows and given back when the rollout ends.
    CREATE TABLE rollout_claims (
        device_id  TEXT PRIMARY KEY,
        rollout_id INTEGER NOT NULL
    );
    -- An ending rollout gives back its claims.
    CREATE INDEX rollout_claims_by_rollout ON rollout_claims (rollout_id);
    CREATE TABLE maintenance_windows (
        school_id TEXT NOT NULL,
        -- e.g. "mon-fri 18:00-06:00", in the controller's time zone
        window    TEXT NOT NULL,
        PRIMARY KEY (school_id, window)
    );
    """,
    # 10: the schools' infrastructure (issue 9): schools from inventory
    #     imports, access points and their BSSIDs, servers, the latest probe of each,
    #     SSH host keys, uplink checks, and what devices see of the Wi-Fi.
    """
    CREATE TABLE schools (
        school_id  TEXT PRIMARY KEY,
        name       TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL
    );
    -- Rooms are in the rooms table (migration 8): an import adds to it.
    CREATE TABLE access_points (
        ap_id      TEXT PRIMARY KEY,
        school_id  TEXT NOT NULL,
        room_id    TEXT NOT NULL DEFAULT '',
        location   TEXT NOT NULL DEFAULT '',
        model      TEXT NOT NULL DEFAULT '',
        mac        TEXT NOT NULL DEFAULT '',
        -- management address: an IP address or a host name
        address    TEXT NOT NULL,
        -- empty: the access point is probed by TCP only, not over SSH
        ssh_user   TEXT NOT NULL DEFAULT '',
        ssh_port   INTEGER NOT NULL DEFAULT 22,
        updated_at REAL NOT NULL
    );
    CREATE INDEX access_points_by_school ON access_points (school_id);
    CREATE TABLE ap_bssids (
        -- lower case, colon separated
        bssid TEXT PRIMARY KEY,
        ap_id TEXT NOT NULL
    );
    CREATE INDEX ap_bssids_by_ap ON ap_bssids (ap_id);
    CREATE TABLE servers (
        server_id  TEXT PRIMARY KEY,
        school_id  TEXT NOT NULL,
        address    TEXT NOT NULL,
        ssh_user   TEXT NOT NULL DEFAULT 'root',
        ssh_port   INTEGER NOT NULL DEFAULT 22,
        updated_at REAL NOT NULL
    );
    CREATE INDEX servers_by_school ON servers (school_id);
    -- The latest probe of each target (kind: ap or server).
    CREATE TABLE probe_results (
        target_kind TEXT NOT NULL,
        target_id   TEXT NOT NULL,
        up          INTEGER NOT NULL,
        -- why it is down (refused, timeout, no SSH banner, host key changed, ...)
        reason      TEXT NOT NULL DEFAULT '',
        -- JSON: uptime, load, memory, disk, clients (what SSH could read)
        facts       TEXT NOT NULL DEFAULT '{}',
        duration    REAL NOT NULL,
        probed_at   REAL NOT NULL,
        PRIMARY KEY (target_kind, target_id)
    );
    -- SSH host keys: the pinned one (`schoolctl servers trust`), and the one last seen
    -- when it is not the pinned one (what trust would pin).
    CREATE TABLE host_keys (
        target_kind TEXT NOT NULL,
        target_id   TEXT NOT NULL,
        pinned      INTEGER NOT NULL,
        key_type    TEXT NOT NULL,
        -- base64 of the key, as in known_hosts
        key_data    TEXT NOT NULL,
        seen_at     REAL NOT NULL,
        PRIMARY KEY (target_kind, target_id, pinned)
    );
    CREATE TABLE uplink_checks (
        school_id  TEXT NOT NULL,
        started_at REAL NOT NULL,
        device_id  TEXT NOT NULL,
        bytes      INTEGER NOT NULL,
        -- NULL until the device answers, or when it failed
        seconds    REAL,
        mbps       REAL,
        error      TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (school_id, started_at)
    );
    -- Checks left running (their device never answered) are failed, old ones pruned.
    CREATE INDEX uplink_checks_by_start ON uplink_checks (started_at);
    -- What each device's latest full report said of its Wi-Fi association.
    CREATE TABLE device_wifi (
        device_id  TEXT PRIMARY KEY,
        bssid      TEXT NOT NULL,
        signal_dbm REAL,
        seen_at    REAL NOT NULL
    );
    CREATE INDEX device_wifi_by_bssid ON device_wifi (bssid);
    -- When any device last reported each BSSID (known to the inventory or not).
    CREATE TABLE bssid_seen (
        bssid   TEXT PRIMARY KEY,
        seen_at REAL NOT NULL
    );
    """,
    # 11: what a rollout keeps of each host's result: the failing task's return code,
    #     the ends of its stdout and stderr, and the host's tasks and failing result
    #     as bounded JSON (inventory/host_output.py). Hosts an abort stopped mid-task
    #     are 'interrupted' from now on; older 'cancelled' rows may be either.
    """
    ALTER TABLE rollout_hosts ADD COLUMN rc INTEGER;
    ALTER TABLE rollout_hosts ADD COLUMN stdout TEXT NOT NULL DEFAULT '';
    ALTER TABLE rollout_hosts ADD COLUMN stderr TEXT NOT NULL DEFAULT '';
    ALTER TABLE rollout_hosts ADD COLUMN detail TEXT NOT NULL DEFAULT '';
    """,
    # 12: device certificates renewed over the stream: which CA signed each device's
    #     certificate in use and when, and a renewed certificate the device has not
    #     connected with yet (enrollments.serial stays the one in use until it does).
    #     A device without a row has the certificate its enrollment gave, from the CA
    #     of that time.
    """
    CREATE TABLE device_certs (
        device_id      TEXT PRIMARY KEY,
        ca_id          TEXT NOT NULL,
        issued_at      REAL NOT NULL,
        next_serial    TEXT,
        next_not_after REAL,
        next_ca_id     TEXT,
        next_issued_at REAL
    );
    """,
    # 13: leases on work that must happen once among the controllers sharing the
    #     store (the lesson dispatcher, the probe and uplink schedules, the rollout
    #     engine): who holds each, until when by the database's clock, and an epoch
    #     that grows with every new holder, so that a holder that lost its lease is
    #     fenced off by number, not by trusting its own clock.
    """
    CREATE TABLE leases (
        name       TEXT PRIMARY KEY,
        holder     TEXT NOT NULL,
        epoch      INTEGER NOT NULL,
        expires_at REAL NOT NULL
    );
    """,
    # 14: one-use tokens of uplink transfers, so that the controller a device's fetch
    #     reaches takes a token whichever controller issued it. Only a hash of each
    #     token is kept: a copy of the database grants no transfer. Expiry is by the
    #     database's clock, like the leases'.
    """
    CREATE TABLE uplink_tokens (
        token_hash TEXT PRIMARY KEY,
        bytes      INTEGER NOT NULL,
        -- which check it is, for log lines
        label      TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX uplink_tokens_by_expiry ON uplink_tokens (expires_at);
    """,
    # 15: a rollout wave's hosts in slices, each claimed and run by whichever
    #     controller has room (controller/rollouts/slices.py): the claimer, an epoch
    #     that grows with every claim (a claimer that lost its claim is fenced off by
    #     number) and until when its claim lasts by the database's clock. A wave begun
    #     before slices existed has none to claim: its hosts go back in the queue.
    """
    ALTER TABLE rollout_hosts ADD COLUMN slice INTEGER;
    CREATE TABLE rollout_slices (
        rollout_id  INTEGER NOT NULL,
        wave        INTEGER NOT NULL,
        slice       INTEGER NOT NULL,
        hosts       INTEGER NOT NULL,
        claimed_by  TEXT NOT NULL DEFAULT '',
        epoch       INTEGER NOT NULL DEFAULT 0,
        expires_at  REAL NOT NULL DEFAULT 0,
        finished_at REAL,
        PRIMARY KEY (rollout_id, wave, slice)
    );
    -- What a controller with room looks for: the unfinished slices, in order.
    CREATE INDEX rollout_slices_unfinished ON rollout_slices (rollout_id, wave, slice)
        WHERE finished_at IS NULL;
    UPDATE rollout_hosts SET wave = NULL, outcome = 'pending', started_at = NULL
        WHERE outcome = 'running' AND EXISTS (SELECT 1 FROM rollout_waves w
            WHERE w.rollout_id = rollout_hosts.rollout_id AND w.wave = rollout_hosts.wave
            AND w.finished_at IS NULL);
    DELETE FROM rollout_waves WHERE finished_at IS NULL;
    """,
)

LATEST = len(MIGRATIONS)
