package spend

import (
	"github.com/detour-dev/detour/regions"
)

// price is one price table entry, per token (the document's are per
// million).
type price struct {
	input, cacheHit, output float64
}

// prices is the price table of one config, indexed for a lookup per call.
// It is immutable once built.
type prices struct {
	exact     map[[2]string]price // backend and model
	byModel   map[string]price
	byBackend map[string]price
	any       *price
	// most is the highest price any backend charges per model (and, under
	// "", for a model no entry names): what a reservation in money
	// assumes before the backend is known.
	most     map[string]price
	mostElse price
}

func newPrices(ps []regions.Price) prices {
	t := prices{exact: map[[2]string]price{}, byModel: map[string]price{}, byBackend: map[string]price{}, most: map[string]price{}}
	for _, p := range ps {
		pr := price{input: p.Input / 1e6, cacheHit: p.CacheHitInput / 1e6, output: p.Output / 1e6}
		if p.CacheHitInput == 0 {
			pr.cacheHit = pr.input
		}
		switch {
		case p.Backend != "" && p.Model != "":
			t.exact[[2]string{p.Backend, p.Model}] = pr
		case p.Model != "":
			t.byModel[p.Model] = pr
		case p.Backend != "":
			t.byBackend[p.Backend] = pr
		default:
			t.any = &pr
		}
	}
	// The highest price of a model is over every backend the table names,
	// and one it does not ("\x00" is no backend's or model's name).
	backends := []string{"\x00"}
	for _, p := range ps {
		if p.Backend != "" {
			backends = append(backends, p.Backend)
		}
	}
	highest := func(model string) price {
		var m price
		for _, b := range backends {
			m = higher(m, t.lookup(b, model))
		}
		return m
	}
	t.mostElse = highest("\x00")
	for _, p := range ps {
		if p.Model != "" {
			t.most[p.Model] = highest(p.Model)
		}
	}
	return t
}

func higher(a, b price) price {
	return price{input: max(a.input, b.input), cacheHit: max(a.cacheHit, b.cacheHit), output: max(a.output, b.output)}
}

// lookup is the price of model on backend: the most specific entry, or
// nothing.
func (t prices) lookup(backend, model string) price {
	if p, ok := t.exact[[2]string{backend, model}]; ok {
		return p
	}
	if p, ok := t.byModel[model]; ok {
		return p
	}
	if p, ok := t.byBackend[backend]; ok {
		return p
	}
	if t.any != nil {
		return *t.any
	}
	return price{}
}

// cost is what tokens t of model cost on backend. Prompt tokens the
// provider served from its context cache are priced as cache hits; the
// rest of the prompt as input.
func (t prices) cost(backend, model string, tk Tokens) float64 {
	p := t.lookup(backend, model)
	hit := min(max(tk.CacheHit, 0), tk.Prompt)
	return float64(hit)*p.cacheHit + float64(tk.Prompt-hit)*p.input + float64(tk.Completion)*p.output
}

// maxCost is e priced at the highest price of model on any backend: what a reservation in
// money assumes, every prompt token a cache miss.
func (t prices) maxCost(model string, e Estimate) float64 {
	p, ok := t.most[model]
	if !ok {
		p = t.mostElse
	}
	return float64(e.Prompt)*p.input + float64(e.Completion)*p.output
}
