//go:build linux

package realsystemd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// BackportsEnv names an environment variable that, when set, names a
// directory laid out like /usr (with lib/systemd/systemd) to use instead of
// the tree Backports fetches.
const BackportsEnv = "TABLEFLIP_SYSTEMD_BACKPORTS"

// backportsPackages are what systemd as PID 1 needs from the newer
// release; everything else (util-linux, libc, …) is the machine's.
var backportsPackages = []string{"systemd", "libsystemd-shared", "libsystemd0"}

// Backports returns a directory to pass as Options.Usr that holds the
// systemd of the machine's Debian release's backports suite (systemd 254
// for bookworm): BackportsEnv if set, else a tree in the user's cache
// directory (tableflip/systemd-backports), which it fetches and unpacks
// the first time: apt-get update and apt-get download with a sources
// list, package lists and cache of its own, then dpkg -x. The packages are
// never installed; the machine's apt state is not touched. The mirror is
// the one the machine's apt sources use for the release itself.
func Backports(ctx context.Context) (string, error) {
	if dir := os.Getenv(BackportsEnv); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "lib/systemd/systemd")); err != nil {
			return "", fmt.Errorf("%s=%s: %w", BackportsEnv, dir, err)
		}
		return dir, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	base := filepath.Join(cache, "tableflip", "systemd-backports")
	tree := filepath.Join(base, "tree")
	if _, err := os.Stat(filepath.Join(tree, "usr/lib/systemd/systemd")); err == nil {
		return filepath.Join(tree, "usr"), nil
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(base, "fetch-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := fetchBackports(ctx, tmp); err != nil {
		return "", fmt.Errorf("realsystemd: fetching systemd from backports: %w", err)
	}
	// Another test process may have fetched it meanwhile: first one wins.
	if err := os.Rename(filepath.Join(tmp, "root"), tree); err != nil {
		if _, serr := os.Stat(filepath.Join(tree, "usr/lib/systemd/systemd")); serr != nil {
			return "", err
		}
	}
	return filepath.Join(tree, "usr"), nil
}

func fetchBackports(ctx context.Context, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	codename, source, err := aptSource()
	if err != nil {
		return err
	}
	// deb [signed-by=…] URI bookworm-backports main
	list := fmt.Sprintf("deb %s %s-backports main\n", source, codename)
	for _, d := range []string{"parts", "lists/partial", "cache/archives/partial", "debs", "root"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "sources.list"), []byte(list), 0o644); err != nil {
		return err
	}
	apt := func(args ...string) error {
		argv := []string{
			"-q",
			"-o", "Dir::Etc::SourceList=" + filepath.Join(dir, "sources.list"),
			"-o", "Dir::Etc::SourceParts=" + filepath.Join(dir, "parts"),
			"-o", "Dir::State::Lists=" + filepath.Join(dir, "lists"),
			"-o", "Dir::Cache=" + filepath.Join(dir, "cache"),
			"-o", "Debug::NoLocking=1",
			"-o", "APT::Sandbox::User=root",
		}
		cmd := exec.CommandContext(ctx, "apt-get", append(argv, args...)...)
		cmd.Dir = filepath.Join(dir, "debs")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := apt("update"); err != nil {
		return err
	}
	var want []string
	for _, p := range backportsPackages {
		want = append(want, p+"/"+codename+"-backports")
	}
	if err := apt(append([]string{"download"}, want...)...); err != nil {
		return err
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "debs", "*.deb"))
	if len(debs) != len(backportsPackages) {
		return fmt.Errorf("apt-get download left %d packages, want %d: %q", len(debs), len(backportsPackages), debs)
	}
	root := filepath.Join(dir, "root")
	for _, deb := range debs {
		if out, err := exec.CommandContext(ctx, "dpkg", "-x", deb, root).CombinedOutput(); err != nil {
			return fmt.Errorf("dpkg -x %s: %w\n%s", deb, err, out)
		}
	}
	// bookworm's packages still ship /lib, /bin and /sbin; the machine has
	// merged them into /usr, and only /usr is overlaid.
	for _, d := range []string{"lib", "bin", "sbin"} {
		src := filepath.Join(root, d)
		if _, err := os.Stat(src); err != nil {
			continue
		}
		dst := filepath.Join(root, "usr", d)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if out, err := exec.CommandContext(ctx, "cp", "-a", src+"/.", dst).CombinedOutput(); err != nil {
			return fmt.Errorf("cp -a %s %s: %w\n%s", src, dst, err, out)
		}
		if err := os.RemoveAll(src); err != nil {
			return err
		}
	}
	if _, err := os.Stat(filepath.Join(root, "usr/lib/systemd/systemd")); err != nil {
		return fmt.Errorf("the unpacked packages have no lib/systemd/systemd: %w", err)
	}
	return nil
}

// aptSource returns the release's code name (/etc/os-release) and, from
// the machine's apt sources, the "[signed-by=…] URI" of the first entry
// for that release's main component.
func aptSource() (codename, source string, err error) {
	osr, err := os.ReadFile("/etc/os-release")
	if err != nil {
		return "", "", err
	}
	for _, line := range strings.Split(string(osr), "\n") {
		if v, ok := strings.CutPrefix(line, "VERSION_CODENAME="); ok {
			codename = strings.Trim(v, `"`)
		}
	}
	if codename == "" {
		return "", "", errors.New("/etc/os-release names no VERSION_CODENAME")
	}
	files := []string{"/etc/apt/sources.list"}
	more, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	files = append(files, more...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var src string
		switch {
		case strings.HasSuffix(f, ".sources"):
			src = deb822Source(string(b), codename)
		case strings.HasSuffix(f, ".list"):
			src = oneLineSource(string(b), codename)
		}
		if src != "" {
			return codename, src, nil
		}
	}
	return "", "", fmt.Errorf("no apt source for %s main in /etc/apt/sources.list{,.d}", codename)
}

// oneLineSource finds "deb [opts] URI codename … main …".
func oneLineSource(text, codename string) string {
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || f[0] != "deb" {
			continue
		}
		opts := ""
		if strings.HasPrefix(f[1], "[") {
			i := 1
			for ; i < len(f) && !strings.HasSuffix(f[i], "]"); i++ {
			}
			opts = strings.Join(f[1:i+1], " ") + " "
			f = append([]string{"deb"}, f[i+1:]...)
		}
		if len(f) >= 4 && f[2] == codename && slices.Contains(f[3:], "main") {
			return opts + f[1]
		}
	}
	return ""
}

// deb822Source finds a stanza with Types: deb, Suites: codename and
// Components: main.
func deb822Source(text, codename string) string {
	for _, stanza := range strings.Split(text, "\n\n") {
		fields := map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(stanza))
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "#") {
				continue
			}
			if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, " ") {
				fields[strings.ToLower(k)] = strings.TrimSpace(v)
			}
		}
		uris := strings.Fields(fields["uris"])
		if len(uris) == 0 || !slices.Contains(strings.Fields(fields["types"]), "deb") ||
			!slices.Contains(strings.Fields(fields["suites"]), codename) ||
			!slices.Contains(strings.Fields(fields["components"]), "main") {
			continue
		}
		if key := fields["signed-by"]; key != "" && !strings.Contains(key, "\n") && strings.HasPrefix(key, "/") {
			return "[signed-by=" + key + "] " + uris[0]
		}
		return uris[0]
	}
	return ""
}
