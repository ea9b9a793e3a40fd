package main

import "errors"

func writeHTMLFile(path string, r *report) error { return errors.New("-html: not written yet") }
