package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// usageWidth is the width --help wraps to, as the Python and Node command
// lines do: nothing is cut at 80 columns.
const usageWidth = 80

// printUsage writes a command's flags, each with its help wrapped to
// usageWidth and its default when it has a telling one.
func printUsage(w io.Writer, fs *flag.FlagSet, summary string) {
	fmt.Fprintf(w, "usage: %s [flags]\n\n", fs.Name())
	for _, line := range wrap(summary, usageWidth-2) {
		fmt.Fprintf(w, "  %s\n", line)
	}
	fmt.Fprintln(w, "\nflags:")
	fs.VisitAll(func(f *flag.Flag) {
		name, help := flag.UnquoteUsage(f)
		head := "  --" + f.Name
		if name != "" {
			head += " " + strings.ToUpper(name)
		}
		fmt.Fprintln(w, head)
		// A token's default comes from $RAVI_TOKEN: never printed.
		if !strings.Contains(f.Name, "token") && telling(f.DefValue) {
			help += " [default: " + f.DefValue + "]"
		}
		for _, line := range wrap(help, usageWidth-6) {
			fmt.Fprintf(w, "      %s\n", line)
		}
	})
}

// wrap splits text into lines of at most width columns, at spaces.
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(text) {
		switch {
		case line == "":
			line = word
		case len(line)+1+len(word) <= width:
			line += " " + word
		default:
			lines = append(lines, line)
			line = word
		}
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}

// telling says whether a default is worth printing: not a zero value.
func telling(value string) bool {
	switch value {
	case "", "0", "false", "0s", "map[]":
		return false
	}
	return true
}
