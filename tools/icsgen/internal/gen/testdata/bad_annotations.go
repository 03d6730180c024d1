package badannotations

import (
	"context"
	"errors"
)

const NotAVar = "x"

var ErrOK = errors.New("ok")

//icsgen:service channel=eight subservice=1 mode=fast min=5 max=2
//icsgen:errors ErrOK NotAVar ErrOK
type Ann interface {
	Unnumbered(ctx context.Context) error
	//icsgen:proc -1
	Negative(ctx context.Context) error
	//icsgen:proc 1024
	TooHigh(ctx context.Context) error
	//icsgen:proc 1
	//icsgen:idempotent
	Unknown(ctx context.Context) error
}
