-- Plays: the data that must survive deploys, failovers and restores.
CREATE TABLE plays (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    track_id    bigint      NOT NULL REFERENCES tracks (id),
    listener_id text        NOT NULL CHECK (listener_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    played_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX plays_track_id_played_at ON plays (track_id, played_at);
