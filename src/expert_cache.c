/* expert_cache.c — owner of the routed-expert slabs (gate, up, down +
 * scales of one expert of one layer).  This first version keeps every slab
 * resident as a view of the mapped checkpoint and validates all of them at
 * load; the get/release protocol is what a streaming cache will keep. */
#include <stdlib.h>
#include "internal.h"
#include "model.h"

struct ds_expert_cache {
    int n_layers, n_experts;
    ds_ffn_w *slabs;       /* [layer][expert]; zeroed for dense layers */
};

ds_status ds_experts_create(ds_model *m, ds_expert_cache **out, ds_error *err)
{
    const ds_config *c = &m->cfg;
    ds_expert_cache *ec = ds_calloc(1, sizeof *ec, err);
    if (!ec)
        return DS_ERR_NOMEM;
    ec->n_layers = c->num_hidden_layers;
    ec->n_experts = c->n_routed_experts;
    ec->slabs = ds_calloc((size_t)ec->n_layers * (size_t)(ec->n_experts ? ec->n_experts : 1),
                          sizeof(ds_ffn_w), err);
    if (!ec->slabs) {
        free(ec);
        return DS_ERR_NOMEM;
    }
    for (int l = 0; l < ec->n_layers; l++) {
        if (!ds_config_is_moe_layer(c, l))
            continue;
        for (int e = 0; e < ec->n_experts; e++) {
            ds_status s = ds_weights_bind_expert(m, l, e, &ec->slabs[(size_t)l * ec->n_experts + e], err);
            if (s != DS_OK) {
                ds_experts_free(ec);
                return s;
            }
        }
    }
    *out = ec;
    return DS_OK;
}

void ds_experts_free(ds_expert_cache *c)
{
    if (!c)
        return;
    free(c->slabs);
    free(c);
}

const ds_ffn_w *ds_experts_get(ds_expert_cache *c, int layer, int e, ds_error *err)
{
    if (layer < 0 || layer >= c->n_layers || e < 0 || e >= c->n_experts) {
        ds_fail(err, DS_ERR_INVALID_ARG, "expert %d of layer %d does not exist", e, layer);
        return NULL;
    }
    return &c->slabs[(size_t)layer * c->n_experts + e];
}

void ds_experts_release(ds_expert_cache *c, int layer, int e)
{
    (void)c;
    (void)layer;
    (void)e;
}
