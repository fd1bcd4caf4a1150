package tokens

// AudienceIngest is the audience of an event-ingest token: it lets a
// sandbox POST its run's events to .../event_stream/ and nothing else (an
// agent token cannot stand in for it, nor it for an agent token). It is
// minted beside the agent token, with the same claims.
const AudienceIngest = "runhub:event_ingest"
