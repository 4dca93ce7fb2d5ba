package ravi

import (
	"fmt"
	"slices"
	"strings"
)

// Hints for error messages: the names a caller could have meant. The Python
// (ravi/_hints.py) and Node (src/hints.ts) members apply the same rule, so one
// typo gets one suggestion in every language.

// closest returns the choice nearest to word by edit distance when it is near
// enough to be a typo (at most a third of the word's letters differ, at least
// one, a swap of two neighbours counting as one); ties go to the first choice
// in sorted order.
func closest(word string, choices []string) (string, bool) {
	sorted := slices.Clone(choices)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	best, bestDistance := "", -1
	for _, c := range sorted {
		if d := distance(word, c); bestDistance < 0 || d < bestDistance {
			best, bestDistance = c, d
		}
	}
	if bestDistance < 0 || bestDistance > max(1, len([]rune(word))/3) || best == word {
		return "", false
	}
	return best, true
}

// didYouMean is ` (did you mean "X"?)` for the closest choice, or "".
func didYouMean(word string, choices []string) string {
	if c, ok := closest(word, choices); ok {
		return fmt.Sprintf(" (did you mean %q?)", c)
	}
	return ""
}

// distance counts the edits from a to b: insert, delete, replace, or swap two
// neighbours (each one).
func distance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	rows := make([][]int, len(ra)+1)
	for i := range rows {
		rows[i] = make([]int, len(rb)+1)
		rows[i][0] = i
	}
	for j := range rows[0] {
		rows[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d := min(rows[i-1][j]+1, rows[i][j-1]+1, rows[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d = min(d, rows[i-2][j-2]+1)
			}
			rows[i][j] = d
		}
	}
	return rows[len(ra)][len(rb)]
}

// knownTypes lists the agent types this node can reach: its own and its
// connected peers', sorted.
func (n *Node) knownTypes() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var known []string
	for name := range n.agentTypes {
		known = append(known, name)
	}
	for _, p := range n.peers {
		if p.info == nil {
			continue
		}
		for _, t := range p.info.GetAgentTypes() {
			known = append(known, t.GetAgentType())
		}
	}
	slices.Sort(known)
	return slices.Compact(known)
}

// notHostedMessage is the message of AGENT_TYPE_NOT_FOUND: the known types
// and the nearest of them.
func (n *Node) notHostedMessage(agentType string) string {
	known := n.knownTypes()
	listed := strings.Join(known, ", ")
	if listed == "" {
		listed = "none"
	}
	return fmt.Sprintf("no node hosts agent type %q%s; known types: %s (asked node %s)", agentType, didYouMean(agentType, known), listed, n.id)
}

// noHandlerMessage is the message of NO_HANDLER: the message types the agent
// type handles.
func noHandlerMessage(at *agentType, agentType, msgType string) string {
	var handled []string
	for name := range at.handlers {
		handled = append(handled, name)
	}
	slices.Sort(handled)
	listed := strings.Join(handled, ", ")
	if listed == "" {
		listed = "nothing"
	}
	return fmt.Sprintf("agent type %q has no handler for %s (it handles %s)", agentType, msgType, listed)
}
