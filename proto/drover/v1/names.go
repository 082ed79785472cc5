package droverv1

// Written by hand beside the generated code: the short names every table,
// message and dashboard uses for the enums, defined once.

// Name is the short name of a health, e.g. "Healthy"; "Unknown" for
// HEALTH_UNKNOWN, HEALTH_UNSPECIFIED and values this build does not know.
func (h Health) Name() string {
	switch h {
	case Health_HEALTH_HEALTHY:
		return "Healthy"
	case Health_HEALTH_PROGRESSING:
		return "Progressing"
	case Health_HEALTH_DEGRADED:
		return "Degraded"
	case Health_HEALTH_MISSING:
		return "Missing"
	case Health_HEALTH_SUSPENDED:
		return "Suspended"
	}
	return "Unknown"
}

// Name is the short name of a sync state, e.g. "OutOfSync"; "Unknown" for
// SYNC_STATE_UNSPECIFIED and values this build does not know.
func (s SyncState) Name() string {
	switch s {
	case SyncState_SYNC_STATE_SYNCED:
		return "Synced"
	case SyncState_SYNC_STATE_OUT_OF_SYNC:
		return "OutOfSync"
	case SyncState_SYNC_STATE_APPLYING:
		return "Applying"
	case SyncState_SYNC_STATE_FAILED:
		return "Failed"
	}
	return "Unknown"
}
