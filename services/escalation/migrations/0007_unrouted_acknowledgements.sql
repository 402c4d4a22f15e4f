-- Acknowledgements by a principal escalation did not route (yet), kept after their
-- incident.acknowledgement.ignored.v1: the reassignment that added her comes on
-- incident.triage, her acknowledgement on incident.activity, with no order between
-- them. When a later step routes her, her acknowledgement is applied and its row
-- goes; a row whose principal is excluded goes too.
CREATE TABLE unrouted_acknowledgements (
    incident_id text   NOT NULL,
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    event_id    text   NOT NULL,
    body        bytea  NOT NULL,
    PRIMARY KEY (incident_id, seq),
    UNIQUE (incident_id, event_id)
);
