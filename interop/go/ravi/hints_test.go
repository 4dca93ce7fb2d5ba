package ravi

import (
	"encoding/json"
	"os"
	"testing"
)

// The nearest-name rule is shared with Python and Node: tests/vectors/hints.json.
func TestClosestFollowsTheSharedVectors(t *testing.T) {
	data, err := os.ReadFile("../../../tests/vectors/hints.json")
	if err != nil {
		t.Fatal(err)
	}
	var vectors struct {
		Cases []struct {
			Word    string   `json:"word"`
			Choices []string `json:"choices"`
			Closest *string  `json:"closest"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(data, &vectors); err != nil {
		t.Fatal(err)
	}
	for _, c := range vectors.Cases {
		got, ok := closest(c.Word, c.Choices)
		switch {
		case c.Closest == nil && ok:
			t.Errorf("closest(%q, %v) = %q, want none", c.Word, c.Choices, got)
		case c.Closest != nil && (!ok || got != *c.Closest):
			t.Errorf("closest(%q, %v) = %q, want %q", c.Word, c.Choices, got, *c.Closest)
		}
	}
}
