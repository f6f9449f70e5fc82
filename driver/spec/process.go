package spec

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/moby/sys/user"
)

// defaultPath is the PATH given to a task whose image and task env both lack
// one (the same value Docker and `runc spec` use).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// buildArgs computes the process argv with Docker semantics:
//
//   - entrypoint: the task's `entrypoint` when set, else the image Entrypoint;
//   - cmd: `command` followed by `args` when `command` is set; else `args` when
//     set; else the image Cmd, but only when the task does not override the
//     entrypoint (overriding the entrypoint discards the image Cmd, as
//     `docker run --entrypoint` does);
//   - argv = entrypoint + cmd.
func buildArgs(in *Input) ([]string, error) {
	entrypoint := in.Image.Entrypoint
	taskEntrypoint := len(in.Entrypoint) > 0
	if taskEntrypoint {
		entrypoint = in.Entrypoint
	}

	var cmd []string
	switch {
	case in.Command != "":
		cmd = append([]string{in.Command}, in.Args...)
	case len(in.Args) > 0:
		cmd = in.Args
	case !taskEntrypoint:
		cmd = in.Image.Cmd
	}

	argv := make([]string, 0, len(entrypoint)+len(cmd))
	argv = append(argv, entrypoint...)
	argv = append(argv, cmd...)
	if len(argv) == 0 {
		return nil, errors.New("command: image has no Entrypoint or Cmd; set `command` (or `entrypoint`)")
	}
	if argv[0] == "" {
		if taskEntrypoint {
			return nil, errors.New("entrypoint: first element is empty; set it to the program to run")
		}
		return nil, errors.New("command: program to run is empty; set `command` to the program to run")
	}
	return argv, nil
}

// buildEnv overlays the task environment on the image environment (task
// wins), adds PATH and HOME when neither provides them, and returns
// "KEY=value" entries sorted by key.
func buildEnv(imageEnv []string, taskEnv map[string]string, home string) []string {
	env := make(map[string]string, len(imageEnv)+len(taskEnv)+2)
	for _, kv := range imageEnv {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			// Not a valid environment entry; an image config may carry a
			// bare name, which has no value to pass on.
			continue
		}
		env[k] = v
	}
	for k, v := range taskEnv {
		if k == "" {
			continue
		}
		env[k] = v
	}
	if _, ok := env["PATH"]; !ok {
		env["PATH"] = defaultPath
	}
	if _, ok := env["HOME"]; !ok {
		if home == "" {
			home = "/"
		}
		env["HOME"] = home
	}

	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, k+"="+env[k])
	}
	return out
}

// buildCwd returns the working directory: the task's `work_dir`, else the
// image WorkingDir, else "/".
func buildCwd(in *Input) (string, error) {
	switch {
	case in.WorkDir != "":
		if !path.IsAbs(in.WorkDir) {
			return "", fmt.Errorf("work_dir: %q is not an absolute path; use a path like %q", in.WorkDir, "/app")
		}
		return path.Clean(in.WorkDir), nil
	case in.Image.WorkingDir != "":
		if !path.IsAbs(in.Image.WorkingDir) {
			return "", fmt.Errorf("work_dir: image WorkingDir %q is not an absolute path; set `work_dir` to an absolute path", in.Image.WorkingDir)
		}
		return path.Clean(in.Image.WorkingDir), nil
	default:
		return "/", nil
	}
}

// resolvedUser is the outcome of resolving a user spec against the rootfs.
type resolvedUser struct {
	UID, GID       uint32
	AdditionalGids []uint32
	Home           string
}

// resolveUser resolves the task's `user` (else the image User, else root)
// against the rootfs's /etc/passwd and /etc/group. Accepted forms are
// "name", "uid", "name:group", "uid:gid" and mixes of these.
func resolveUser(rootfs, taskUser, imageUser string) (*resolvedUser, error) {
	field := "user"
	spec := taskUser
	if spec == "" {
		spec = imageUser
		field = "user (from the image)"
	}
	spec = strings.TrimSpace(spec)

	passwdPath, passwd, err := openInRootfs(rootfs, "/etc/passwd")
	if err != nil {
		return nil, fmt.Errorf("%s: reading %s: %w", field, passwdPath, err)
	}
	if passwd != nil {
		defer passwd.Close()
	}
	groupPath, group, err := openInRootfs(rootfs, "/etc/group")
	if err != nil {
		return nil, fmt.Errorf("%s: reading %s: %w", field, groupPath, err)
	}
	if group != nil {
		defer group.Close()
	}

	// user.GetExecUser treats a nil reader as "no entries", which lets a
	// numeric spec work in an image without /etc/passwd. Passing a typed nil
	// *os.File would not be nil as an io.Reader, hence the explicit vars.
	var passwdR, groupR io.Reader
	if passwd != nil {
		passwdR = passwd
	}
	if group != nil {
		groupR = group
	}

	eu, err := user.GetExecUser(spec, &user.ExecUser{Uid: 0, Gid: 0, Home: "/"}, passwdR, groupR)
	if err != nil {
		return nil, userError(field, spec, passwdPath, groupPath, passwd != nil, group != nil, err)
	}
	if eu.Uid < 0 || eu.Gid < 0 {
		return nil, fmt.Errorf("%s: %q resolves to a negative uid or gid in %s; use a numeric uid:gid", field, spec, passwdPath)
	}

	ru := &resolvedUser{UID: uint32(eu.Uid), GID: uint32(eu.Gid), Home: eu.Home}
	seen := make(map[uint32]bool, len(eu.Sgids))
	for _, g := range eu.Sgids {
		if g < 0 || seen[uint32(g)] {
			continue
		}
		seen[uint32(g)] = true
		ru.AdditionalGids = append(ru.AdditionalGids, uint32(g))
	}
	return ru, nil
}

// userError explains a failed user lookup, naming the file that was searched.
func userError(field, spec, passwdPath, groupPath string, havePasswd, haveGroup bool, err error) error {
	name, grp, _ := strings.Cut(spec, ":")
	switch {
	case errors.Is(err, user.ErrRange):
		return fmt.Errorf("%s: %q is out of range; use ids between 0 and %d", field, spec, 1<<31-1)
	case errors.Is(err, user.ErrNoGroupEntries):
		where := groupPath
		if !haveGroup {
			where += " (file does not exist)"
		}
		return fmt.Errorf("%s: group %q not found in %s; use a numeric gid or a group that exists in the image", field, grp, where)
	case errors.Is(err, user.ErrNoPasswdEntries):
		where := passwdPath
		if !havePasswd {
			where += " (file does not exist)"
		}
		return fmt.Errorf("%s: user %q not found in %s; use a numeric uid[:gid] or a user that exists in the image", field, name, where)
	default:
		return fmt.Errorf("%s: resolving %q against %s and %s: %w", field, spec, passwdPath, groupPath, err)
	}
}

// openInRootfs opens a file inside the rootfs, resolving symlinks as if
// rootfs were "/" so a link in the image cannot point at a host file. A
// missing file is reported as (path, nil, nil).
func openInRootfs(rootfs, name string) (string, *os.File, error) {
	p, err := securejoin.SecureJoin(rootfs, name)
	if err != nil {
		return path.Join(rootfs, name), nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return p, nil, nil
	}
	if err != nil {
		return p, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return p, nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return p, nil, fmt.Errorf("not a regular file (mode %s)", st.Mode())
	}
	return p, f, nil
}
