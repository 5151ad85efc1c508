-- gasguard city desk, schema 1. Applied once by `gasguard-city migrate` (city/db.py), in one
-- transaction with its row in schema_migrations.

CREATE TABLE districts (
    id          text PRIMARY KEY,
    name        text NOT NULL
);

-- One row per kitchen, created the first time it is heard from. district_id is null until the
-- site is assigned (a site id prefix in the config, or `gasguard-city site`).
CREATE TABLE sites (
    site_id         text PRIMARY KEY,
    district_id     text REFERENCES districts (id),
    name            text,
    address         text,
    first_seen      timestamptz NOT NULL DEFAULT now(),
    last_seen       timestamptz NOT NULL DEFAULT now(),   -- any message
    last_heartbeat  timestamptz,
    pending         integer,            -- events waiting in the kitchen's outbox (heartbeat)
    max_seq         bigint NOT NULL DEFAULT 0,  -- the highest event seq stored
    stored          bigint NOT NULL DEFAULT 0,  -- events stored: max_seq - stored are missing
    status          jsonb,              -- the last retained status document
    status_at       timestamptz
);
CREATE INDEX sites_district ON sites (district_id);

-- Every event of every kitchen, exactly once: (site_id, seq) is the kitchen's own key, so a
-- re-sent event is a no-op.
CREATE TABLE events (
    site_id     text NOT NULL REFERENCES sites (site_id),
    seq         bigint NOT NULL CHECK (seq >= 1),
    kind        text NOT NULL,
    class       text NOT NULL CHECK (class IN ('alarm', 'other')),
    source      text NOT NULL,
    utc         text NOT NULL,          -- the kitchen's time stamp, as sent
    details     jsonb NOT NULL DEFAULT '{}',
    text_zh     text,
    text_en     text,
    stored_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (site_id, seq)
);
CREATE INDEX events_kind ON events (kind, stored_at);

-- What the duty officers work on: a gas alarm, a fault, a failed valve, a silent site.
-- One open incident per (site, category, source); a repeat adds to its timeline.
CREATE TABLE incidents (
    id              bigserial PRIMARY KEY,
    site_id         text NOT NULL REFERENCES sites (site_id),
    category        text NOT NULL,      -- gas, valve, fault, power, silent
    source          text NOT NULL,      -- detector, valve or 'site'
    severity        smallint NOT NULL,  -- 3 high gas, 2 low gas / valve / silent, 1 fault
    title_zh        text NOT NULL,
    title_en        text NOT NULL,
    opened_seq      bigint,             -- the event that opened it (null: silent site)
    raised_at       text,               -- the kitchen's time of that event
    stored_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    state           text NOT NULL DEFAULT 'new'
                    CHECK (state IN ('new', 'acknowledged', 'dispatched', 'resolved', 'closed')),
    cleared_at      timestamptz,        -- the kitchen reported it back to normal
    repeats         integer NOT NULL DEFAULT 0,
    first_viewed_at timestamptz,
    first_viewed_by text,
    acked_at        timestamptz,
    acked_by        text,
    dispatched_at   timestamptz,
    dispatched_by   text,
    resolved_at     timestamptz,
    resolved_by     text,
    closed_at       timestamptz,
    closed_by       text,
    escalation      smallint NOT NULL DEFAULT 0,
    escalated_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE UNIQUE INDEX incidents_one_open ON incidents (site_id, category, source)
    WHERE state <> 'closed';
CREATE INDEX incidents_open ON incidents (state, severity DESC, stored_at DESC)
    WHERE state <> 'closed';

-- Every step of an incident, by whom: events from the kitchen, officers' actions, escalations.
CREATE TABLE incident_log (
    id          bigserial PRIMARY KEY,
    incident_id bigint NOT NULL REFERENCES incidents (id),
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL,          -- an operator's name, 'kitchen', 'watch'
    action      text NOT NULL,          -- opened, repeat, cleared, viewed, acknowledged, ...
    note        text NOT NULL DEFAULT '',
    seq         bigint                  -- the kitchen event behind it, when there is one
);
CREATE INDEX incident_log_incident ON incident_log (incident_id, id);

CREATE TABLE operators (
    name            text PRIMARY KEY,
    display_name    text NOT NULL,
    role            text NOT NULL CHECK (role IN ('officer', 'admin')),
    district_id     text REFERENCES districts (id),   -- an officer's district; null for admins
    password_hash   text NOT NULL,      -- Argon2id, from argon2-cffi
    disabled        boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (role = 'admin' OR district_id IS NOT NULL)
);

-- Only a hash of each session token is kept: a copy of the table logs nobody in.
CREATE TABLE sessions (
    token_sha256    text PRIMARY KEY,
    operator        text NOT NULL REFERENCES operators (name),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);

-- Who did what at the desk (log-ins included), for the record the plan asks for.
CREATE TABLE audit (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    operator    text NOT NULL,
    action      text NOT NULL,
    target      text NOT NULL DEFAULT '',
    details     jsonb NOT NULL DEFAULT '{}',
    peer        text NOT NULL DEFAULT ''
);
CREATE INDEX audit_operator ON audit (operator, at);

-- Notifications the escalation sent (SMS, webhooks), and whether the receiver took them.
CREATE TABLE notifications (
    id          bigserial PRIMARY KEY,
    incident_id bigint NOT NULL REFERENCES incidents (id),
    level       smallint NOT NULL,
    channel     text NOT NULL,          -- sms, webhook
    target      text NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    ok          boolean NOT NULL,
    error       text NOT NULL DEFAULT ''
);
