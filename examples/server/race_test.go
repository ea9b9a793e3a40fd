//go:build race

package main

// raceEnabled: the variants the tests build get -race too.
const raceEnabled = true
