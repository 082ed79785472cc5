package spec

import (
	"errors"

	"google.golang.org/protobuf/encoding/protojson"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// RolloutStrategy reads an application's spec.rollout into a Strategy: nil
// when the spec has none. It reads the proto's JSON as ParseStrategy reads
// a file's, so the API, droverctl's files and the hub refuse the same
// strategies with the same messages. Errors are FieldErrors named from
// "spec.". The hub parses an application's strategy once, when the
// application is set, and keeps the result.
func RolloutStrategy(spec *droverv1.ApplicationSpec) (*Strategy, error) {
	var errs FieldErrors
	s := parseRollout(&errs, spec.GetRollout())
	return s, errs.Err()
}

func parseRollout(errs *FieldErrors, r *droverv1.RolloutStrategy) *Strategy {
	if r == nil {
		return nil
	}
	js, err := protojson.Marshal(r)
	if err != nil {
		errs.Add("spec.rollout", "not encodable: %v", err)
		return nil
	}
	s, err := parseStrategyJSON(js)
	var fes FieldErrors
	switch {
	case errors.As(err, &fes):
		for _, fe := range fes {
			errs.Add("spec."+fe.Field, "%s", fe.Msg)
		}
		return nil
	case err != nil:
		errs.Add("spec.rollout", "%v", err)
		return nil
	case s == nil:
		// Not reached (protojson writes {} for an empty message), but a
		// rollout block that is set is never "no rollout".
		return &Strategy{}
	}
	return s
}

// validateRollout checks spec.rollout.
func validateRollout(errs *FieldErrors, r *droverv1.RolloutStrategy) {
	parseRollout(errs, r)
}
