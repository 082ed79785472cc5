package replicas

import (
	"fmt"
	"slices"
	"testing"
)

const ownerJobs = 10000

func ownerJobNames() []string {
	jobs := make([]string, ownerJobs)
	for i := range jobs {
		jobs[i] = fmt.Sprintf("app-%d", i)
	}
	return jobs
}

// Every member gets a fair share of the jobs, for member names that differ
// in one character as a StatefulSet's do.
func TestOwnerSharesFairly(t *testing.T) {
	for _, n := range []int{2, 3, 5, 7} {
		t.Run(fmt.Sprintf("%d members", n), func(t *testing.T) {
			members := make([]string, n)
			for i := range members {
				members[i] = fmt.Sprintf("drover-hub-%d", i)
			}
			counts := map[string]int{}
			for _, job := range ownerJobNames() {
				counts[Owner(job, members)]++
			}
			fair := ownerJobs / n
			// ±15% of a fair share: binomial noise at these sizes is
			// under 3%, a biased hash is far off.
			for _, m := range members {
				if c := counts[m]; c < fair*85/100 || c > fair*115/100 {
					t.Errorf("%s owns %d of %d jobs, want about %d: %v", m, c, ownerJobs, fair, counts)
				}
			}
		})
	}
}

// Removing a member moves only its jobs; adding one moves only the jobs it
// now owns. The order of members does not matter.
func TestOwnerMovesOnlyTheLeaversJobs(t *testing.T) {
	all := []string{"hub-a", "hub-b", "hub-c", "hub-d"}
	without := []string{"hub-d", "hub-a", "hub-c"} // hub-b left, order shuffled
	reversed := slices.Clone(all)
	slices.Reverse(reversed)
	moved := 0
	for _, job := range ownerJobNames() {
		before, after := Owner(job, all), Owner(job, without)
		if before != "hub-b" && after != before {
			t.Fatalf("job %s moved from %s to %s though %s stayed", job, before, after, before)
		}
		if before == "hub-b" {
			moved++
			if !slices.Contains(without, after) {
				t.Fatalf("job %s moved to %q, not a member", job, after)
			}
		}
		if back := Owner(job, reversed); back != before {
			t.Fatalf("job %s: owner %s for members in reverse order, %s in order", job, back, before)
		}
	}
	if moved == 0 {
		t.Fatal("hub-b owned no job")
	}
}

func TestOwnerOfNoMembers(t *testing.T) {
	if got := Owner("app", nil); got != "" {
		t.Fatalf("Owner with no members = %q, want \"\"", got)
	}
}
