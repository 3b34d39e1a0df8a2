// Package libnbd is a build stub: see go.mod. Every call fails.
package libnbd

import "errors"

var errStub = errors.New("libnbd is not available in this KubeVirt build (kubevirt-spawner test harness)")

const (
	CONTEXT_BASE_ALLOCATION   = "base:allocation"
	CONTEXT_QEMU_DIRTY_BITMAP = "qemu:dirty-bitmap:"
	STATE_HOLE                = 1
	STATE_ZERO                = 2
	STATE_DIRTY               = 1
)

type LibnbdExtent struct {
	Length uint64
	Flags  uint64
}

type ExtentCallback64 func(metacontext string, offset uint64, entries []LibnbdExtent, err *int) int

type BlockStatus64Optargs struct{}

type PreadOptargs struct{}

type Libnbd struct{}

func Create() (*Libnbd, error) { return nil, errStub }

func (*Libnbd) Close() error                              { return errStub }
func (*Libnbd) AddMetaContext(string) error               { return errStub }
func (*Libnbd) CanMetaContext(string) (bool, error)       { return false, errStub }
func (*Libnbd) GetSize() (uint64, error)                  { return 0, errStub }
func (*Libnbd) SetExportName(string) error                { return errStub }
func (*Libnbd) ConnectUnix(string) error                  { return errStub }
func (*Libnbd) Pread([]byte, uint64, *PreadOptargs) error { return errStub }
func (*Libnbd) BlockStatus64(uint64, uint64, ExtentCallback64, *BlockStatus64Optargs) error {
	return errStub
}
