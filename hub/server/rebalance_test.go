package server

import "testing"

func TestToShed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		loads map[string]int
		want  int
	}{
		{"alone", map[string]int{"a": 3000}, 0},
		{"balanced", map[string]int{"a": 1000, "b": 1000, "c": 1000}, 0},
		{"within slack", map[string]int{"a": 1090, "b": 960, "c": 950}, 0},
		{"a new replica: a step at a time", map[string]int{"a": 4500, "b": 4500, "c": 0}, 90},
		{"little above the share: only the excess", map[string]int{"a": 12, "b": 0}, 1},
		{"small fleet", map[string]int{"a": 4, "b": 0}, 0},
		{"below the share", map[string]int{"a": 0, "b": 4500, "c": 4500}, 0},
		{"self unknown", map[string]int{"b": 10}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := toShed("a", tc.loads); got != tc.want {
				t.Errorf("toShed(a, %v) = %d, want %d", tc.loads, got, tc.want)
			}
		})
	}
}
